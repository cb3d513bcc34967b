"""What a test needs from the machine (shared data, dlib models, an mp4 writer): a skip that says why in a
local run, a failure where $SSLFER_REQUIRE_DATA is set (.ci/run sets it), so CI cannot pass with whole areas
untested."""
from __future__ import annotations

import importlib.metadata
import os

import pytest

REQUIRE_ENV = "SSLFER_REQUIRE_DATA"


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def missing(reason: str):
    """Stop the test for an absent input: skipped locally, failed when required."""
    if required():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: every test must run)", pytrace=False)
    pytest.skip(reason)


def package_installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def dlib_models():
    """The dlib model files. face_recognition_models is a hard dependency, so when it is installed a failed
    lookup is a bug and fails the test in any run; only a checkout without the package may skip."""
    from sslfer_core.dlib_models import MODELS_PACKAGE, DlibModelsNotFound, locate_dlib_models

    try:
        return locate_dlib_models()
    except DlibModelsNotFound as error:
        if package_installed(MODELS_PACKAGE):
            pytest.fail(f"{MODELS_PACKAGE} is installed but the model lookup failed: {error}", pytrace=False)
        missing(str(error))


# A skip for what only other hardware can run (a CUDA device, the CPU a recording was made on); it stays a
# skip under $SSLFER_REQUIRE_DATA, since no checkout can supply it.
MACHINE_SKIP = "not on this machine: "


def machine_lacks(reason: str):
    pytest.skip(MACHINE_SKIP + reason)


def cuda_only():
    """skipif marker for tests of the CUDA path."""
    import torch

    return pytest.mark.skipif(not torch.cuda.is_available(), reason=MACHINE_SKIP + "no CUDA device")
