"""Learning-rate schedule: linear warm-up to the base rate, then cosine to exactly 0 at the last step."""
import math

import pytest
import torch

from train.lr_schedule import WarmupCosine, default_warmup, make_scheduler


def test_warmup_then_cosine_to_zero():
    f = WarmupCosine(warmup_steps=4, total_steps=14)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0
    assert f(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.0, abs=1e-12)
    values = [f(s) for s in range(4, 15)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_scheduler_drives_adam_and_survives_state_dict():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=3e-4)
    sched = make_scheduler(opt, 2, 10)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:3] == pytest.approx([1.5e-4, 3e-4, 3e-4])
    opt2 = torch.optim.Adam([param], lr=3e-4)
    sched2 = make_scheduler(opt2, 2, 10)
    sched2.load_state_dict(sched.state_dict())
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(3e-4 * WarmupCosine(2, 10)(6))


def test_default_warmup():
    assert default_warmup(100) == 5 and default_warmup(10) == 1 and default_warmup(10**6) == 1000
