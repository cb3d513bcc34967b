"""Two CPU processes (gloo) compute the same loss and gradients as one process on the same global batch:
embeddings, video ids, validity and descriptors are gathered, and gradients flow back through the gather.

BatchNorm normalises each rank's own rows in training mode (unless --sync-bn, which needs CUDA), so the
model runs in eval mode here: then every row's embedding is independent of the batch and the two
set-ups must agree exactly up to float summation order."""
import os

import torch

from gloo_ranks import join_gloo, spawn_ranks
from sslfer_core.models import ContrastiveModel
from train.distributed import DistContext, shutdown
from train.methods.contrastive.batch_builder import MaskFNConfig
from train.methods.contrastive.step import ContrastiveStep

B, VIEWS, WORLD, SIDE = 3, 4, 2, 32


def _global_batch():
    g = torch.Generator().manual_seed(0)
    n = VIEWS * WORLD * B
    samples = WORLD * B
    valid = torch.ones(VIEWS, samples, dtype=torch.bool)
    valid[2:, [1, 4]] = False  # two samples' HardNeg rows fell back
    return {
        "x": torch.randn(VIEWS, samples, 3, SIDE, SIDE, generator=g),
        "video_ids": torch.tensor([10, 11, 12, 13, 10, 14]).repeat(VIEWS, 1),  # samples 0 and 4: same video
        "row_valid": valid,
        "descriptors": torch.randn(VIEWS, samples, 8, generator=g),
        "has_descriptor": (torch.rand(VIEWS, samples, generator=g) > 0.2) & valid,
        "n": n,
    }


def _rank_rows(tensor, rank):
    """(VIEWS, samples, ...) -> this rank's view-major rows."""
    return tensor[:, rank * B:(rank + 1) * B].reshape(VIEWS * B, *tensor.shape[2:])


def _model(state):
    model = ContrastiveModel("resnet18", proj_dim=16)
    model.load_state_dict(state)
    return model.eval()


def _rank_main(rank, port, state, out_dir):
    ctx = join_gloo(rank, port, WORLD)
    try:
        data = _global_batch()
        model = _model(state)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        batch = {k: _rank_rows(data[k], rank) for k in ("video_ids", "row_valid", "descriptors", "has_descriptor")}
        step = ContrastiveStep(ctx, batch_size=B, num_views=VIEWS, resize=SIDE, crop=SIDE, maskfn=MaskFNConfig())
        result = step.loss(ddp, _rank_rows(data["x"], rank), batch)
        result.loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        torch.save({"loss": result.loss.detach(), "grads": grads,
                    "false_negatives": result.inputs.false_negatives}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        shutdown(ctx)


def test_two_gloo_ranks_match_one_process(tmp_path):
    torch.manual_seed(0)
    state = ContrastiveModel("resnet18", proj_dim=16).state_dict()
    spawn_ranks(_rank_main, (state, str(tmp_path)), WORLD)

    data = _global_batch()
    model = _model(state)
    flat = {k: data[k].reshape(VIEWS * WORLD * B, *data[k].shape[2:])
            for k in ("x", "video_ids", "row_valid", "descriptors", "has_descriptor")}
    step = ContrastiveStep(DistContext(), batch_size=WORLD * B, num_views=VIEWS, resize=SIDE, crop=SIDE,
                           maskfn=MaskFNConfig())
    reference = step.loss(model, flat["x"], flat)
    reference.loss.backward()

    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["loss"], reference.loss.detach(), rtol=1e-5, atol=1e-6)
        assert got["false_negatives"] == reference.inputs.false_negatives > 0
        for name, p in model.named_parameters():
            torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
