"""Result files and tables: provenance, mean ± std over runs, plain and Markdown tables, `compare`."""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import click
import numpy as np

from data_manifest.manifest import now_utc  # noqa: F401  (re-exported: results and tables stamp with it)
from sslfer_core.atomic_files import write_error_text, write_json_atomic
from train.run_config import code_version  # noqa: F401  (re-exported)

# (key in a metrics dict, column title, scale for display, decimals)
COLUMNS = (
    ("macro_f1", "macro F1 (%)", 100.0, 2),
    ("accuracy", "accuracy (%)", 100.0, 2),
    ("uar", "UAR (%)", 100.0, 2),
    ("ccc_valence", "CCC-V", 1.0, 3),
    ("ccc_arousal", "CCC-A", 1.0, 3),
    ("rmse_valence", "RMSE-V", 1.0, 3),
    ("rmse_arousal", "RMSE-A", 1.0, 3),
)
PAPER_COLUMNS = ("macro_f1", "accuracy", "ccc_valence", "ccc_arousal", "rmse_valence", "rmse_arousal")


def json_ready(value):
    """NaN/inf -> None and numpy scalars/arrays -> Python, so the file is strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarise(metric_dicts: list[dict]) -> dict:
    """Mean, sample std (ddof=1; 0 for a single run) and values of every scalar metric present in all runs."""
    summary = {}
    if not metric_dicts:
        return summary
    for key in metric_dicts[0]:
        values = [m.get(key) for m in metric_dicts]
        if key == "count" or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue
        array = np.array(values, dtype=np.float64)
        finite = array[np.isfinite(array)]
        summary[key] = {
            "mean": float(finite.mean()) if finite.size else None,
            "std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            "n": int(finite.size),
            "values": [float(v) for v in array],
        }
    return summary


@contextlib.contextmanager
def output_write(path):
    """Around the write of an output file: a failure (a full disk, most often) is one error line that
    says so ("disk full (N free there)"); the atomic write leaves any earlier file as it was."""
    try:
        yield
    except OSError as error:
        raise click.ClickException(f"could not write {path} ({write_error_text(error, Path(path).parent)})") from None


def write_results(out_dir: Path, payload: dict) -> Path:
    path = Path(out_dir) / "results.json"
    with output_write(path):
        write_json_atomic(path, json_ready(payload))
    return path


def _cell(entry: dict | None, scale: float, decimals: int) -> str:
    if not entry or entry.get("mean") is None:
        return "–"
    text = f"{entry['mean'] * scale:.{decimals}f}"
    if entry.get("n", 1) > 1:
        text += f" ± {entry['std'] * scale:.{decimals}f}"
    return text


def table_rows(payload: dict, label_with_method: bool = False) -> list[tuple[str, dict]]:
    rows = []
    for entry in payload.get("backbones", []):
        label = entry["backbone"]["name"]
        if label_with_method:
            label = f"{label} ({payload.get('command', '?')})"
        rows.append((label, entry.get("summary", {})))
    return rows


def render_table(rows: list[tuple[str, dict]], keys: tuple[str, ...], *, markdown: bool) -> str:
    """Rows = backbone/method, columns = the metrics in `keys` that at least one row has."""
    columns = [c for c in COLUMNS if c[0] in keys and any(c[0] in summary for _, summary in rows)]
    header = ["backbone"] + [title for _, title, _, _ in columns]
    body = [[label] + [_cell(summary.get(key), scale, decimals) for key, _, scale, decimals in columns]
            for label, summary in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(str(row[i])) for row in [header] + body) for i in range(len(header))]
    fmt = lambda row: "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(row) for row in body])


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_summary(summary, where: str) -> str | None:
    """What is wrong with a summary (metric -> {mean, std, n, ...}) that tables read, or None."""
    if not isinstance(summary, dict):
        return f"{where} is not an object"
    for metric, entry in summary.items():
        if not isinstance(entry, dict):
            return f"{where}.{metric} is not an object"
        for key in ("mean", "std"):
            if entry.get(key) is not None and not _is_number(entry[key]):
                return f"{where}.{metric}.{key} is {entry[key]!r}, not a finite number"
        if "n" in entry and not (isinstance(entry["n"], int) and not isinstance(entry["n"], bool) and entry["n"] >= 0):
            return f"{where}.{metric}.n is {entry['n']!r}, not a count"
    return None


def load_results(path: Path) -> dict:
    """A results.json of sslfer-eval, checked for what tables read: each backbone entry's backbone.name (a
    string) and summary (numbers or null), and per-fold summaries. Another lab's or a hand-edited file
    gives one line naming the key, never a traceback."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise click.ClickException(f"cannot read results file {path}: {str(error)[:200]}") from None
    if not isinstance(payload, dict) or "backbones" not in payload:
        raise click.ClickException(f"{path} is not an sslfer-eval results.json (no 'backbones')")
    if not isinstance(payload["backbones"], list):
        raise click.ClickException(f"{path}: 'backbones' is not a list")
    for i, entry in enumerate(payload["backbones"]):
        where = f"backbones[{i}]"
        problem = None
        if not isinstance(entry, dict):
            problem = f"{where} is not an object"
        elif not isinstance(entry.get("backbone"), dict) or not isinstance(entry["backbone"].get("name"), str):
            problem = f"{where} has no backbone.name (a string)"
        else:
            problem = _check_summary(entry.get("summary", {}), f"{where}.summary")
            per_fold = entry.get("per_fold", {})
            if problem is None and not isinstance(per_fold, dict):
                problem = f"{where}.per_fold is not an object"
            for fold, summary in (per_fold.items() if problem is None else ()):
                problem = problem or _check_summary(summary, f"{where}.per_fold.{fold}")
        if problem:
            raise click.ClickException(f"{path}: {problem}; not a results.json that sslfer-eval wrote")
    return payload


def compare_markdown(paths: list[Path]) -> str:
    rows = []
    for path in paths:
        rows.extend(table_rows(load_results(path), label_with_method=True))
    return render_table(rows, PAPER_COLUMNS, markdown=True)
