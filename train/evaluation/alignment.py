"""Optional face alignment for evaluation images (--align), via the project's dlib face toolkit.

The toolkit is imported lazily so evaluation works without it when --align is not used.
"""
from __future__ import annotations

import click
import numpy as np


class FaceAligner:
    """Detect 68 landmarks and warp to the canonical crop; None when no face is found."""

    def __init__(self, size: int, model_dir: str | None = None) -> None:
        try:
            from sslfer_core.dlib_models import locate_dlib_models
            from sslfer_core.face_alignment import align_face
            from sslfer_core.face_detection import FaceDetector
        except ImportError as error:
            raise click.ClickException(f"--align needs the face toolkit (sslfer_core.face_detection): {error}")
        try:
            models = locate_dlib_models(model_dir)
        except FileNotFoundError as error:
            raise click.ClickException(f"--align: {error}")
        self.size = size
        self._detector = FaceDetector(models)
        self._align = align_face

    def __call__(self, image_rgb: np.ndarray) -> np.ndarray | None:
        observation = self._detector.detect(image_rgb)
        if observation is None:
            return None
        return self._align(image_rgb, observation.landmarks, self.size).image
