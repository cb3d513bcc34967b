"""MoCo-v2: its loss against the written-out formula, the queue's order and wrap-around, exact resume
(queue and pointer included), two gloo ranks filling the same queue as one process, the shuffled BN
groups, the refusals, and its export (the query encoder)."""
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner

from gloo_ranks import join_gloo, spawn_ranks
from train.checkpoints import list_checkpoints
from train.cli import main
from train.distributed import DistContext, shutdown
from train.methods import get_method
from train.methods.moco import MoCoModel
from train.methods.moco.queue import enqueue, moco_loss
from train.metrics_log import read_metrics
from train.weights_file import read_weights
from train_fixtures import TINY_TRAIN, interrupt_after_checkpoint
from train_fixtures import two_shards as shards  # noqa: F401 (a fixture)

STEPS = ["--steps", "4", "--ckpt-every", "2", "--warmup-steps", "1"]
SMALL = ["--queue-size", "12", "--bn-groups", "2"]
B, WORLD, SIDE, QUEUE = 4, 2, 32, 12


def _invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_loss_is_infonce_over_the_positive_and_the_queue_written_out():
    torch.manual_seed(0)
    q, k = torch.randn(3, 4), torch.randn(3, 4)
    queue = F.normalize(torch.randn(5, 4), dim=1)
    t = 0.2

    def unit(v):
        norm = math.sqrt(sum(float(x) ** 2 for x in v))
        return [float(x) / norm for x in v]

    def dot(u, v):
        return sum(x * y for x, y in zip(u, v))

    rows = []
    for i in range(3):
        qi = unit(q[i])
        positive = math.exp(dot(qi, unit(k[i])) / t)
        negatives = sum(math.exp(dot(qi, [float(x) for x in n]) / t) for n in queue)
        rows.append(-math.log(positive / (positive + negatives)))
    assert float(moco_loss(q, k, queue, t)) == pytest.approx(sum(rows) / 3, rel=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        moco_loss(q, k, queue, 0.0)


def test_queue_replaces_its_oldest_keys_and_wraps_around():
    queue, pointer = torch.zeros(5, 1), torch.zeros((), dtype=torch.long)
    enqueue(queue, pointer, torch.tensor([[1.0], [2.0]]))
    enqueue(queue, pointer, torch.tensor([[3.0], [4.0]]))
    assert queue.flatten().tolist() == [1, 2, 3, 4, 0] and int(pointer) == 4
    enqueue(queue, pointer, torch.tensor([[5.0], [6.0], [7.0]]))  # past the end: rows 4, 0, 1
    assert queue.flatten().tolist() == [6, 7, 3, 4, 5] and int(pointer) == 2
    with pytest.raises(ValueError, match="do not fit"):
        enqueue(queue, pointer, torch.zeros(6, 1))


def test_keys_come_back_in_sample_order_whatever_order_they_pass_in():
    torch.manual_seed(0)
    model = MoCoModel("resnet18", proj_dim=8, queue_size=QUEUE, bn_groups=2).eval()
    views = torch.randn(2 * B, 3, SIDE, SIDE)
    with torch.no_grad():
        _, straight = model(views, torch.arange(B))
        _, shuffled = model(views, torch.tensor([2, 0, 3, 1]))
    torch.testing.assert_close(shuffled, straight, rtol=1e-5, atol=1e-6)
    model.train()  # in training mode the groups' statistics differ, so the key order matters
    with torch.no_grad():
        _, a = model(views, torch.arange(B))
        _, b = model(views, torch.tensor([2, 0, 3, 1]))
    assert not torch.allclose(a, b)


def test_interrupted_and_resumed_run_matches_straight_run(shards, tmp_path, monkeypatch):
    common = ["moco", "--shards", shards, *TINY_TRAIN, *SMALL, "--timeaug", *STEPS]
    assert _invoke([*common, "--out", tmp_path / "straight"]).exit_code == 0
    restore_saving = interrupt_after_checkpoint(monkeypatch, step=2)
    assert _invoke([*common, "--out", tmp_path / "split"]).exit_code == 130
    restore_saving()
    torch.manual_seed(1234)
    second = _invoke(["moco", "--out", tmp_path / "split", "--resume"])
    assert second.exit_code == 0, second.output
    a, b = (torch.load(list_checkpoints(tmp_path / name)[-1], weights_only=True) for name in ("straight", "split"))
    assert a["step"] == b["step"] == 4
    assert int(a["model"]["queue_ptr"]) == 4 * 6 % QUEUE  # 4 steps of 6 keys into a queue of 12
    for key in a["model"]:  # query and key encoders, the queue and its pointer
        assert torch.equal(a["model"][key], b["model"][key]), key
    ra, rb = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("straight", "split"))
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]


def _method():
    cls = get_method("moco")
    cfg = cls.config_class(shards="-", out="-", arch="resnet18", proj_dim=8, batch_size=B * WORLD,
                           queue_size=QUEUE, bn_groups=2, steps=1)
    return cls, cfg


def _global_views():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, B * WORLD, 3, SIDE, SIDE, generator=g) for _ in range(2)]  # two steps


def _steps(method, net, views_per_step, rank, world):
    """Two steps on this rank's share of each global batch; returns losses, queue and pointer."""
    losses = []
    for views in views_per_step:
        mine = views[:, rank * B * WORLD // world:(rank + 1) * B * WORLD // world]
        x = mine.reshape(-1, 3, SIDE, SIDE)
        loss, _ = method.contrast(net, x, torch.arange(mine.shape[1]).flip(0))
        losses.append(loss.detach())
        method.after_optimizer_step(method.model, len(losses), 2)
    return torch.stack(losses), method.model.queue.clone(), method.model.queue_ptr.clone()


def _rank_main(rank, port, state, out_dir):
    ctx = join_gloo(rank, port, WORLD)
    try:
        cls, cfg = _method()
        method = cls(cfg, ctx)
        model = method.build_model()
        model.load_state_dict(state)
        model.eval()  # BatchNorm independent of the batch, so one process and two ranks must agree
        net = torch.nn.parallel.DistributedDataParallel(model)
        losses, queue, pointer = _steps(method, net, _global_views(), rank, WORLD)
        torch.save({"losses": losses, "queue": queue, "pointer": pointer}, out_dir / f"rank{rank}.pt")
    finally:
        shutdown(ctx)


def test_two_gloo_ranks_fill_the_queue_as_one_process(tmp_path):
    torch.manual_seed(0)
    cls, cfg = _method()
    single = cls(cfg, DistContext(device=torch.device("cpu")))
    model = single.build_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    losses, queue, pointer = _steps(single, model, _global_views(), 0, 1)
    spawn_ranks(_rank_main, (state, tmp_path), WORLD)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert int(got["pointer"]) == int(pointer) == 2 * B * WORLD % QUEUE
        torch.testing.assert_close(got["queue"], queue, rtol=1e-5, atol=1e-6)  # same keys, same rows
        # each rank's loss is over its own queries; their mean is the one-process loss
    both = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["losses"] for r in range(WORLD)]
    torch.testing.assert_close(torch.stack(both).mean(0), losses, rtol=1e-5, atol=1e-6)


def test_refusals_are_one_line(shards, tmp_path):
    base = ["moco", "--shards", shards, *TINY_TRAIN, "--steps", "1"]
    for flag in ("--hardneg", "--maskfn"):
        result = _invoke([*base, "--out", tmp_path / flag[2:], *SMALL, flag])
        assert result.exit_code == 2 and f"{flag} acts on in-batch negatives" in result.output
    too_long = _invoke([*base, "--out", tmp_path / "long", "--queue-size", "100000", "--bn-groups", "2"])
    assert too_long.exit_code == 1 and "more than the 240 frames" in too_long.output
    groups = _invoke([*base, "--out", tmp_path / "groups", "--queue-size", "12", "--bn-groups", "4"])
    assert groups.exit_code == 1 and "--bn-groups 4 does not split the 6 samples" in groups.output
    for result in (too_long, groups):  # one error line (after the note of a first hashing of the shards)
        assert "Traceback" not in result.output and result.output.strip().splitlines()[-1].startswith("Error: ")


def test_export_is_the_query_resnet_as_torchvision_keys(shards, tmp_path):
    run = tmp_path / "run"
    assert _invoke(["moco", "--shards", shards, "--out", run, *TINY_TRAIN, *SMALL, "--steps", "2"]).exit_code == 0
    out = tmp_path / "moco.safetensors"
    assert _invoke(["export", run, "-o", out]).exit_code == 0
    state, metadata = read_weights(out)
    assert metadata["method"] == "moco" and metadata["arch"] == "resnet18"
    missing, unexpected = torchvision.models.resnet18().load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    model = torch.load(list_checkpoints(run)[-1], weights_only=True)["model"]
    assert torch.equal(state["layer4.1.conv2.weight"], model["backbone.layer4.1.conv2.weight"])
    assert not torch.equal(state["layer4.1.conv2.weight"], model["key_backbone.layer4.1.conv2.weight"])
