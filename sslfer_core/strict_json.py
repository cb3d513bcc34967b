"""JSON from files another lab or an old run hands over: every way a text can fail is one ValueError."""
from __future__ import annotations

import json


def _no_constant(name: str):
    # Python's json reads NaN and Infinity, which are not JSON: another reader (or our own --json
    # output) would choke on them, and no count or setting of ours is one.
    raise ValueError(f"{name} is not a JSON value")


def loads(text: str | bytes, *, constants: bool = False):
    """json.loads, or ValueError with a short reason: also for nesting deeper than the parser's stack
    (RecursionError), integers longer than Python converts, and NaN and Infinity unless `constants` (for
    records whose numbers the reader checks one by one anyway)."""
    try:
        return json.loads(text, parse_constant=None if constants else _no_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(exc.msg) from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:
        raise ValueError(str(exc)) from None
