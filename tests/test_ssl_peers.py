"""BYOL's and MoCo's losses agree with lightly's (lightly-ai/lightly, the [test] extra) on the same tensors:
NegativeCosineSimilarity for BYOL's regression, NTXentLoss with a memory bank for MoCo's queue."""
import pytest
import torch
import torch.nn.functional as F

from train.methods.byol.loss import byol_loss
from train.methods.moco.queue import enqueue, moco_loss

lightly_loss = pytest.importorskip("lightly.loss")


def test_byol_loss_is_lightlys_negative_cosine_over_both_view_orders():
    torch.manual_seed(0)
    b = 8
    p, z = torch.randn(2 * b, 16), torch.randn(2 * b, 16)
    negative_cosine = lightly_loss.NegativeCosineSimilarity()
    # sum over both orders of mean(2 - 2 cos) = 4 + 2 * (mean(-cos) + mean(-cos))
    theirs = 4 + 2 * (negative_cosine(p[:b], z[b:]) + negative_cosine(p[b:], z[:b]))
    torch.testing.assert_close(byol_loss(p, z), theirs, rtol=1e-6, atol=1e-6)


def test_moco_loss_and_queue_are_lightlys_ntxent_with_a_memory_bank():
    torch.manual_seed(0)
    b, d, size, t = 4, 8, 12, 0.2
    criterion = lightly_loss.NTXentLoss(temperature=t, memory_bank_size=(size, d))
    queue, pointer = F.normalize(torch.randn(size, d), dim=1), torch.zeros((), dtype=torch.long)
    criterion.memory_bank.bank.copy_(queue)
    criterion.memory_bank.bank_ptr.zero_()
    for _ in range(2):  # two batches, the second against the keys the first enqueued
        q = torch.randn(b, d, requires_grad=True)
        k = torch.randn(b, d)
        theirs = criterion(q, k)  # enqueues the normalised k, as MoCo does
        ours = moco_loss(q, k, queue.clone(), t)
        enqueue(queue, pointer, F.normalize(k, dim=1))
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(queue, criterion.memory_bank.bank, rtol=0, atol=1e-7)
    assert int(pointer) == int(criterion.memory_bank.bank_ptr) == 2 * b
