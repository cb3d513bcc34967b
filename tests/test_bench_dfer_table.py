"""benchmarks/bench_dfer_table.py without training: mean ± std, the 2-pooled-std mark, the table it renders,
the refusal of rows that ran other seeds, and --cuda without a GPU."""
import json
import math
import subprocess
import sys

import pytest
import torch

from benchmark_scripts import BENCHMARKS, loaded_script

SCRIPT = BENCHMARKS / "bench_dfer_table.py"


@pytest.fixture(scope="module")
def bench():
    with loaded_script("bench_dfer_table.py") as module:
        yield module


def test_mean_std_and_the_pooled_std_mark(bench):
    mean, std = bench.mean_std([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4) and std == pytest.approx(0.2)  # sample std, ddof 1
    # a: 0.30 ± 0.10, b: 0.55 ± 0.10: pooled 0.10, difference 0.25 > 0.20 -> marked
    diff, pooled, marked = bench.comparison([0.2, 0.3, 0.4], [0.45, 0.55, 0.65])
    assert diff == pytest.approx(0.25) and pooled == pytest.approx(0.1) and marked
    # b: 0.45 ± 0.10: difference 0.15 < 0.20 -> not marked
    assert not bench.comparison([0.2, 0.3, 0.4], [0.35, 0.45, 0.55])[2]
    # pooled std = sqrt((0.1^2 + 0.3^2) / 2) = 0.2236; difference 0.4 < 0.447 -> not marked
    diff, pooled, marked = bench.comparison([0.2, 0.3, 0.4], [0.4, 0.7, 1.0])
    assert pooled == pytest.approx(math.sqrt(0.05)) and diff == pytest.approx(0.4) and not marked
    assert bench.comparison([0.5, 0.5, 0.5], [0.6, 0.6, 0.6])[2]  # no spread at all: any difference shows
    assert not bench.comparison([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])[2]


def _results(path, rows):
    path.mkdir(parents=True)
    payload = {"backbones": [{"backbone": {"name": name}, "train_clips_per_second": 2.5,
                              "runs": [{"seed": s, "test": {"uar": u, "war": w}} for s, (u, w) in enumerate(values)]}
                             for name, values in rows.items()]}
    (path / "results.json").write_text(json.dumps(payload))
    return path / "results.json"


def test_rows_are_paired_by_seed_and_rendered(bench, tmp_path):
    results = _results(tmp_path / "a", {"random-lgi-tiny": [(0.2, 0.3), (0.3, 0.4), (0.4, 0.5)],
                                        "mae": [(0.45, 0.55), (0.55, 0.65), (0.65, 0.75)]})
    rows = []
    bench.collect(results, "finetune", {"random-lgi-tiny": ("LGI-Former random", None, "r"),
                                        "mae": ("LGI-Former MAE", None, "m")}, [0, 1, 2], rows)
    assert rows[0]["uar"] == [0.2, 0.3, 0.4] and rows[1]["clips_per_second"] == 2.5
    text = bench.render(rows, [("random -> MAE", "r", "m")], [0, 1, 2])
    assert "| finetune | LGI-Former random | - | 30.0 ± 10.0 | 40.0 ± 10.0 | 2.50 |" in text
    assert "| random -> MAE | +25.0 * | 10.0 | +25.0 * | 10.0 |" in text
    short = _results(tmp_path / "b", {"x": [(0.2, 0.3), (0.3, 0.4)]})
    with pytest.raises(SystemExit, match="ran seeds"):
        bench.collect(short, "linear", {"x": ("X", None, "x")}, [0, 1, 2], [])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_cuda_without_a_gpu_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--cuda"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "bench_dfer_table: --cuda needs a CUDA device; none is visible"
