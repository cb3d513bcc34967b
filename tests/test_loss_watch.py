"""LossWatch reads the pending losses in order and names the first non-finite one."""
import math

import pytest
import torch

from train.loss_watch import LossWatch, NonFiniteLoss, settles_each_step


def test_settle_returns_pending_losses_oldest_first_then_nothing():
    watch = LossWatch()
    assert watch.settle() == []
    for step, value in [(1, 2.5), (2, 2.25), (3, 2.0)]:
        watch.add(step, 0, torch.tensor(value, requires_grad=True) * 1.0)
    assert watch.settle() == [2.5, 2.25, 2.0]
    assert watch.settle() == []


def test_settle_names_the_first_non_finite_loss_and_forgets_the_batch():
    watch = LossWatch()
    for step, value in [(7, 1.0), (8, float("nan")), (9, float("inf"))]:
        watch.add(step, 2, torch.tensor(value))
    with pytest.raises(NonFiniteLoss) as caught:
        watch.settle()
    assert caught.value.step == 8 and caught.value.epoch == 2 and math.isnan(caught.value.value)
    assert watch.settle() == []


def test_bf16_losses_are_read_as_floats():
    watch = LossWatch()
    watch.add(1, 0, torch.tensor(1.5, dtype=torch.bfloat16))
    assert watch.settle() == [1.5]


def test_only_cuda_defers_the_read():
    assert settles_each_step(torch.device("cpu"))
    assert not settles_each_step(torch.device("cuda", 0))
