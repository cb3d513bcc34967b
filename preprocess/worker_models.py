"""Models loaded once per worker process (cached by config) and single-threaded numeric libraries.

Parallelism comes from one process per core; letting OpenCV, BLAS or torch start their own thread
pools in every worker would oversubscribe the cores.
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS")
# Faces smaller than this are looked for once per skipped clip, to tell "small face" from "no face".
SMALL_FACE_PROBE_PX = 20

_pinned_pid: int | None = None
_cache: dict[tuple, "FaceModels"] = {}


def single_thread_env() -> None:
    """Set before workers start so that their BLAS/OpenMP pools are created with one thread."""
    for name in THREAD_ENV_VARS:
        os.environ[name] = "1"


def pin_threads() -> None:
    """One OpenCV thread (set once per process) and one torch thread (whenever torch has been imported)."""
    global _pinned_pid
    if _pinned_pid != os.getpid():
        import cv2

        cv2.setNumThreads(1)
        _pinned_pid = os.getpid()
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def worker_init() -> None:
    """Start of every worker process: Ctrl-C is the parent's to handle (it stops the pool and exits with a
    message); a worker that also raised KeyboardInterrupt would print its own traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pin_threads()


@dataclass(frozen=True)
class ModelSpec:
    model_dir: str | None
    min_face_px: int
    cnn_fallback: bool
    descriptor: str  # resolved kind or "none"
    device: str | None = None  # torch device of a weighted descriptor


class FaceModels:
    def __init__(self, spec: ModelSpec):
        from sslfer_core.dlib_models import locate_dlib_models
        from sslfer_core.face_detection import FaceDetector

        self.spec = spec
        self.files = locate_dlib_models(spec.model_dir)
        self.detector = FaceDetector(self.files, min_face_px=spec.min_face_px, use_cnn_fallback=spec.cnn_fallback)
        self._small_detector = None
        self.descriptor = None
        if spec.descriptor != "none":
            from sslfer_core.descriptors import make_descriptor

            self.descriptor = make_descriptor(spec.descriptor, device=spec.device)
            pin_threads()  # the descriptor may have imported torch

    def small_face_detector(self):
        if self._small_detector is None:
            from sslfer_core.face_detection import FaceDetector

            self._small_detector = FaceDetector(self.files, min_face_px=SMALL_FACE_PROBE_PX)
        return self._small_detector


def face_models(spec: ModelSpec) -> FaceModels:
    pin_threads()
    models = _cache.get(spec)
    if models is None:
        models = _cache[spec] = FaceModels(spec)
    return models
