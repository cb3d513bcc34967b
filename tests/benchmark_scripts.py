"""Benchmark scripts (benchmarks/*.py, not a package) imported as modules for their tests."""
from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Iterator

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextmanager
def loaded_script(filename: str) -> Iterator[ModuleType]:
    """benchmarks/`filename` as a module named after it, registered in sys.modules while in use
    (dataclasses resolve their module by name) and removed afterwards."""
    spec = importlib.util.spec_from_file_location(f"{Path(filename).stem}_script", BENCHMARKS / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]
