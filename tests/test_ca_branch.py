"""The CA motion branch: shapes, parameter counts against MAE-DFER-CA's published totals, and motion inputs
computed before mixup / cutmix with the same mixing applied to them."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslfer_core import ca_branch
from sslfer_core.ca_branch import (CABlock, CAConfig, CAMotionBranch, MixConfig, MixDraw, MotionFusionClassifier,
                                   PositionBranch, apply_mix, mix_with_motion, motion_map, soft_targets)

# MAE-DFER-CA's "number of params" (LGI-Former full encoder + 7-class head + CA parts), and the plain classifier:
REFERENCE_ADD = 114_324_610
REFERENCE_CAT = 114_328_194
REFERENCE_ADD_POS = 118_588_040
REFERENCE_PLAIN = 84_878_343  # LGI-Former full preset + LayerNorm + Linear(512, 7)
# Built by the reference, used by no forward pass, not built here:
UNUSED_CA_FC = 100_352 * 7 + 7  # Linear(512 * 196, 7) inside its CA ResNet = 702,471
UNUSED_POS = 512 + (512 * 5 + 5) + (512 + 1)  # its position ViT's class token, 512->5 head, 512->1 mask = 3,590


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class _NoParamEncoder(nn.Module):
    """Stands in for any encoder: pooled(x) -> (B, 512) with no parameters, so counts isolate the CA side."""

    def pooled(self, clip):
        return clip.mean(dim=(1, 2, 3, 4))[:, None].expand(-1, 512)


@pytest.mark.parametrize("fusion, reference, unused", [
    ("add", REFERENCE_ADD, UNUSED_CA_FC),
    ("cat", REFERENCE_CAT, UNUSED_CA_FC),
    ("add-pos", REFERENCE_ADD_POS, UNUSED_CA_FC + UNUSED_POS),
])
def test_ca_side_parameter_count_matches_the_reference_less_its_unused_layers(fusion, reference, unused):
    model = MotionFusionClassifier(_NoParamEncoder(), 512, 7, fusion)
    plain_head = 512 * 7 + 7  # the plain classifier's head, part of REFERENCE_PLAIN
    extra_over_plain = _count(model) - plain_head
    assert extra_over_plain == reference - REFERENCE_PLAIN - unused


def test_the_counts_in_numbers():
    # add: 114,324,610 - 84,878,343 - 702,471 = 28,743,796 (CA branch with its Linear(51,200 -> 512))
    assert _count(CAMotionBranch()) == 28_743_796
    # add-pos: 118,588,040 - 114,324,610 - 3,590 = 4,259,840 (the 2-layer position ViT)
    assert _count(PositionBranch()) == 4_259_840
    # cat: the head grows from 512 -> 7 to 1024 -> 7: 114,328,194 - 114,324,610 = 3,584 = 512 * 7
    assert REFERENCE_CAT - REFERENCE_ADD == 512 * 7


def test_layers_as_in_the_reference():
    branch = CAMotionBranch()
    convs = [m for m in branch.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    assert (branch.stem[0].in_channels, branch.stem[0].out_channels, branch.stem[0].stride) == (3, 180, (2, 2))
    assert (branch.stem[3].in_channels, branch.stem[3].out_channels, branch.stem[3].stride) == (180, 128, (1, 1))
    widths = [(b.conv1.in_channels, b.conv1.out_channels, b.conv1.stride[0]) for b in branch.blocks]
    assert widths == [(128, 128, 1), (128, 128, 2), (128, 256, 2), (256, 512, 2)]
    assert isinstance(branch.blocks[0].shortcut, nn.Identity)
    assert all(isinstance(b.shortcut, nn.Sequential) for b in branch.blocks[1:])
    assert (branch.fc.in_features, branch.fc.out_features) == (51_200, 512)


def test_output_shapes_at_the_reference_size():
    torch.manual_seed(0)
    clip = torch.randn(1, 3, 16, 160, 160)
    model = MotionFusionClassifier(_NoParamEncoder(), 512, 7, "add-pos").eval()  # every CA part at 160 px
    with torch.no_grad():
        assert model.ca(motion_map(clip)).shape == (1, 512)
        assert model.positions(clip[:, :, 0]).shape == (1, 512, 10, 10)
        assert model(clip).shape == (1, 7)
    small = torch.randn(2, 3, 4, 32, 32)
    for fusion, classes in (("add", 7), ("cat", 11)):
        net = MotionFusionClassifier(_NoParamEncoder(), 512, classes, fusion, CAConfig(img_size=32, frames=4)).eval()
        with torch.no_grad():
            assert net(small).shape == (2, classes)


def test_small_input_and_frame_difference_option():
    config = CAConfig(img_size=32, frames=4, motion="frame-diff", out_dim=64)
    branch = CAMotionBranch(config)
    assert branch.stem[0].in_channels == 3 * 3  # 3 channels x (4 - 1) differences
    assert branch.fc.in_features == 512 * 2 * 2
    out = branch(motion_map(torch.randn(2, 3, 4, 32, 32), "frame-diff"))
    assert out.shape == (2, 64) and bool((out >= 0).all())  # ReLU after the last Linear
    with pytest.raises(ValueError, match="divisible by 16"):
        CAConfig(img_size=40).check()
    with pytest.raises(ValueError, match="must equal"):
        MotionFusionClassifier(_NoParamEncoder(), 512, 7, "add", CAConfig(img_size=32, out_dim=64))


def test_motion_maps_by_hand():
    # frame values 1, 4, 7 (every pixel, every channel): mean 4 minus first 1 = 3; differences 4-1 = 3, 7-1 = 6
    clip = torch.tensor([1.0, 4.0, 7.0]).view(1, 1, 3, 1, 1).expand(1, 3, 3, 2, 2)
    assert torch.equal(motion_map(clip), torch.full((1, 3, 2, 2), 3.0))
    diff = motion_map(clip, "frame-diff")
    assert diff.shape == (1, 6, 2, 2)
    assert diff[0, :, 0, 0].tolist() == [3.0, 6.0, 3.0, 6.0, 3.0, 6.0]  # channel-major: c0 t1, c0 t2, c1 t1 ...
    with pytest.raises(ValueError, match="unknown motion"):
        motion_map(clip, "optical-flow")


def test_continuous_attention_multiplies_the_pooled_previous_map():
    torch.manual_seed(1)
    block = CABlock(8, 16, 2).eval()
    x, previous = torch.randn(2, 8, 8, 8), torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        out, attention = block(x, previous)
        own = block(x, None)[1]
    pooled = F.max_pool2d(previous, 3, 2, 1)
    # pooled previous by hand at one position: window rows 1..3, columns 3..5 of the 8x8 map for output (1, 2)
    assert pooled[0, 0, 1, 2] == previous[0, 0, 1:4, 3:6].max()
    torch.testing.assert_close(attention, own * pooled)
    assert out.shape == (2, 16, 4, 4)
    # a zero prior attention silences the block's output
    with torch.no_grad():
        silent, _ = block(x, torch.zeros(2, 1, 8, 8))
    assert torch.count_nonzero(silent) == 0


def _clip(batch=2, frames=4, size=8, seed=0):
    return torch.rand(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def test_motion_is_computed_before_mixing():
    clip = _clip()
    labels = torch.tensor([0, 1])
    mixup_only = MixConfig(mixup_alpha=0.8, cutmix_alpha=0.0)

    def nonlinear(c):  # a motion input that does not commute with mixing
        return (c[:, :, 1:] - c[:, :, :1]).abs().sum(dim=2)

    mixed_clip, mixed_motion, _, _, draw = mix_with_motion(clip, labels, 2, np.random.default_rng(0), mixup_only,
                                                           motion=nonlinear)
    assert draw.mixed and draw.box is None and 0.0 < draw.lam < 1.0
    lam = draw.lam
    # sample 0 mixes with sample 1 (the reversed batch) with weight lam
    expected = lam * nonlinear(clip)[0] + (1 - lam) * nonlinear(clip)[1]
    torch.testing.assert_close(mixed_motion[0], expected)
    assert not torch.allclose(mixed_motion, nonlinear(mixed_clip))  # motion-after-mixing would differ
    torch.testing.assert_close(mixed_clip[0], lam * clip[0] + (1 - lam) * clip[1])


def test_cutmix_pastes_the_same_box_into_every_frame_and_the_motion_map():
    clip, labels = _clip(size=16), torch.tensor([2, 0])
    cutmix_only = MixConfig(mixup_alpha=0.0, cutmix_alpha=1.0)
    mixed_clip, mixed_motion, first, targets, draw = mix_with_motion(clip, labels, 3, np.random.default_rng(3),
                                                                     cutmix_only, first_frame=True)
    y0, y1, x0, x1 = draw.box
    assert y1 > y0 and x1 > x0
    motion = motion_map(clip)
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    assert torch.equal(mixed_clip[0][..., inside], clip[1][..., inside])
    assert torch.equal(mixed_clip[0][..., ~inside], clip[0][..., ~inside])
    assert torch.equal(mixed_motion[0][..., inside], motion[1][..., inside])
    assert torch.equal(mixed_motion[0][..., ~inside], motion[0][..., ~inside])
    assert torch.equal(first, mixed_clip[:, :, 0])
    assert draw.lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 256)
    # label smoothing 0.1 over 3 classes: off = 0.1/3, on = 0.9 + 0.1/3; sample 0 = lam * one-hot(2) + (1-lam) * one-hot(0)
    off, on = 0.1 / 3, 0.9 + 0.1 / 3
    lam = draw.lam
    torch.testing.assert_close(targets[0], torch.tensor([lam * off + (1 - lam) * on, off, lam * on + (1 - lam) * off]))


def test_for_the_reference_inputs_the_order_makes_no_numerical_difference():
    # Both motion inputs are linear in the pixels and the batch-mode mixing uses one box for all frames, so the
    # reference's motion-after-mixing gives the same maps; computing before mixing matters for other inputs.
    clip, labels = _clip(size=16), torch.tensor([0, 1])
    for mode in ca_branch.MOTION_INPUTS:
        for seed in range(4):
            mixed_clip, mixed_motion, _, _, _ = mix_with_motion(clip, labels, 2, np.random.default_rng(seed),
                                                                MixConfig(), motion=mode)
            torch.testing.assert_close(mixed_motion, motion_map(mixed_clip, mode), atol=1e-6, rtol=0)


def test_no_mixing_when_switched_off():
    clip = _clip()
    draw = ca_branch.draw_mix(8, 8, MixConfig(prob=0.0), np.random.default_rng(0))
    assert draw == MixDraw(1.0, None, False)
    assert apply_mix(clip, draw) is clip
    targets = soft_targets(torch.tensor([1, 0]), 2, draw, 0.0)
    assert targets.tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_fusion_wrapper_takes_a_frame_feature_encoder():
    # e.g. a ResNet applied per frame and averaged over time: any module whose forward gives (B, D)
    class FrameMean(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 32)

        def forward(self, clip):
            return self.proj(clip.mean(dim=(3, 4)).transpose(1, 2)).mean(dim=1)

    model = MotionFusionClassifier(FrameMean(), 32, 5, "cat", CAConfig(img_size=32, frames=4, out_dim=16))
    assert model.head.in_features == 48
    out = model(_clip(frames=4, size=32))
    assert out.shape == (2, 5)
    out.sum().backward()
    assert model.encoder.proj.weight.grad is not None and model.ca.fc.weight.grad is not None


def test_totals_with_the_lgi_former_encoder():
    # With the real encoder the totals are the reference's less only its unused layers.
    lgi_former = pytest.importorskip("sslfer_core.lgi_former")
    config = lgi_former.preset("full")
    expected = {"add": REFERENCE_ADD - UNUSED_CA_FC, "cat": REFERENCE_CAT - UNUSED_CA_FC,
                "add-pos": REFERENCE_ADD_POS - UNUSED_CA_FC - UNUSED_POS}
    for fusion, total in expected.items():
        model = MotionFusionClassifier(lgi_former.LGIFormerEncoder(config), config.dim, 7, fusion)
        assert _count(model) == total  # add 113,622,139; cat 113,625,723; add-pos 117,881,979
