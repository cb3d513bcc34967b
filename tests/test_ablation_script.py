"""benchmarks/ablation.py without running it: the budgets it would train with and its guard against
mixing two budgets in one output folder."""

import pytest

from benchmark_scripts import loaded_script


@pytest.fixture(scope="module")
def ablation():
    with loaded_script("ablation.py") as module:
        yield module


def test_resuming_with_another_budget_is_refused(ablation, tmp_path):
    small = ablation.BUDGETS["small"]
    record = tmp_path / "budget.json"
    ablation.require_same_budget(record, small)  # first use writes the record
    ablation.require_same_budget(record, small)  # same budget: accepted
    changed = ablation.Budget(**{**small.__dict__, "lr": small.lr * 3})
    with pytest.raises(SystemExit, match=r"another budget \(lr: 0\.001 -> 0\.003"):
        ablation.require_same_budget(record, changed)
    cropped = ablation.Budget(**{**small.__dict__, "crop_area": (0.3, 0.9)})
    other = tmp_path / "other.json"
    ablation.require_same_budget(other, cropped)
    ablation.require_same_budget(other, cropped)  # the record's list equals the budget's tuple
    with pytest.raises(SystemExit, match="crop_area"):
        ablation.require_same_budget(other, small)


def test_every_row_trains_with_the_same_budget_and_its_own_flags(ablation):
    assert len(ablation.ROWS) == 8 and ablation.ROWS["SimCLR"] == ()
    assert ablation.ROWS["all four"] == ("timeaug", "hardneg", "faceswap", "maskfn")
    slugs = {ablation.slug(row) for row in ablation.ROWS}
    assert len(slugs) == 8  # run folders never collide
    for budget in ablation.BUDGETS.values():
        assert budget.precision in ("auto", "fp32", "bf16") and budget.lr > 0


def test_differences_flag_only_gaps_beyond_two_pooled_std(ablation):
    results = {"SimCLR": {"macro_f1": (0.25, 0.01)}, "A": {"macro_f1": (0.28, 0.01)},
               "B": {"macro_f1": (0.26, 0.01)}, "random": {"macro_f1": (0.20, 0.0)}}
    lines = ablation.differences(results, "SimCLR")
    assert lines[0].startswith("A vs SimCLR: +3.00") and lines[0].endswith("exceeds the seed spread")
    assert lines[1].startswith("B vs SimCLR: +1.00") and lines[1].endswith("within the seed spread")
    assert len(lines) == 2  # random is compared with separately


def summary(f1: float, accuracy: float) -> dict:
    return {"macro_f1": {"mean": f1}, "accuracy": {"mean": accuracy}}


def test_a_stopped_table_leaves_its_partial_results(ablation, tmp_path):
    table = tmp_path / "table.md"
    probed = ablation.ProbedSoFar(table, ["SimCLR", "TimeAug", "random"], expected=6)
    probed.add("random", 1, summary(0.30, 0.36))
    probed.add("SimCLR", 1, summary(0.34, 0.40))
    assert probed.add("SimCLR", 0, summary(0.32, 0.38)) == 3
    text = table.read_text()
    assert text.startswith("Partial: 3 of 6 runs probed")
    assert "| SimCLR |" in text and "| 33.00 ± 1.41 | 39.00 ± 1.41 | 2 |" in text
    assert "\n| random |" in text and "\n| TimeAug |" not in text  # no probe of it yet
    assert "SimCLR vs random: +3.00 F1 points; not judged: one seed" in text  # random has one seed so far
    probed.add("random", 0, summary(0.29, 0.35))
    assert "SimCLR vs random: +3.50 F1 points; 2 pooled std = 2.24: exceeds" in table.read_text()
    results = ablation.tabulate(probed.probed, probed.rows)
    assert results["SimCLR"]["values_macro_f1"] == [0.32, 0.34]  # in seed order, not arrival order
    probed.add("TimeAug", 0, summary(0.31, 0.37))
    probed.add("TimeAug", 1, summary(0.33, 0.39))
    final = table.read_text()
    assert final.startswith("| row |") and "Partial" not in final  # all six in: the final table
    assert "\n| TimeAug | ✓ |" in final and "TimeAug vs SimCLR: -1.00 F1 points" in final


def test_run_timings_survive_a_restart(ablation, tmp_path):
    path = tmp_path / "timings.json"
    ablation.RunTimings(path).record("simclr-s0", train_s=812.4, resumed=False)
    again = ablation.RunTimings(path)
    again.record("simclr-s0", probe_s=75.0)
    again.record("simclr-s1", train_s=400.0, resumed=True)
    assert ablation.RunTimings(path).runs == {
        "simclr-s0": {"train_s": 812.4, "resumed": False, "probe_s": 75.0},
        "simclr-s1": {"train_s": 400.0, "resumed": True}}


def test_the_first_failure_stops_the_tasks_not_started(ablation):
    ran = []

    def task(name):
        ran.append(name)
        if name == "fails":
            raise SystemExit("failed: see logs/train-x.log")

    with pytest.raises(SystemExit, match="train-x.log"):
        ablation.run_all([(task, ("first",)), (task, ("fails",)), (task, ("never",))], parallel=1)
    assert ran == ["first", "fails"]
    ablation.run_all([(task, ("a",)), (task, ("b",))], parallel=2)
    assert sorted(ran[2:]) == ["a", "b"]
