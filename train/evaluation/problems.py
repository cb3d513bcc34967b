"""Collects input problems (missing files, corrupt images, unknown labels...) so a run can report them and go on."""
from __future__ import annotations

from collections import OrderedDict

EXAMPLES_KEPT = 5


class ProblemLog:
    """Counts per kind of problem plus the first few examples of each."""

    def __init__(self) -> None:
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._examples: dict[str, list[str]] = {}

    def add(self, kind: str, example: str) -> None:
        self._counts[kind] = self._counts.get(kind, 0) + 1
        examples = self._examples.setdefault(kind, [])
        if len(examples) < EXAMPLES_KEPT:
            examples.append(example)

    def count(self, kind: str) -> int:
        return self._counts.get(kind, 0)

    def __bool__(self) -> bool:
        return bool(self._counts)

    def summary_lines(self) -> list[str]:
        return [
            f"{count} {kind} (e.g. {', '.join(self._examples[kind])})" for kind, count in self._counts.items()
        ]

    def as_dict(self) -> dict:
        return {kind: {"count": count, "examples": list(self._examples[kind])} for kind, count in self._counts.items()}
