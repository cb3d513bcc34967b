"""Contrastive model shapes, the small-map convolution and the torchvision-compatible backbone export."""
import copy

import pytest
import torch
from torchvision import models as tv_models

from sslfer_core.models import (ContrastiveModel, ProjectionHead, SmallMapConv2d, backbone_state_dict, build_backbone,
                                infer_arch)

WIDTH = {"resnet18": 512, "resnet50": 2048}


@pytest.fixture(scope="module", params=["resnet18", "resnet50"])
def model(request):
    torch.manual_seed(0)
    return ContrastiveModel(request.param, proj_dim=128)


def plain_torchvision(arch):
    """Unmodified torchvision ResNet on the meta device: same keys, no time spent on initialisation."""
    with torch.device("meta"):
        return getattr(tv_models, arch)(weights=None)


def test_forward_shapes_and_head_widths(model):
    width = WIDTH[model.arch]
    assert model.backbone.feature_dim == width
    linears = [m for m in model.projector.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(width, width), (width, 128)]
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model.backbone(x).shape == (2, width)
        assert model(x).shape == (2, 128)


def test_backbone_export_loads_into_plain_torchvision(model):
    state = backbone_state_dict(model)
    assert not any(k.startswith(("fc.", "backbone.", "module.")) for k in state)
    target = plain_torchvision(model.arch)
    result = target.load_state_dict(state, strict=False, assign=True)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    # The loaded network computes the same features as our backbone (in float64: our small-map convolutions
    # sum in another order than oneDNN's, which differs by ~1e-5 in float32).
    target.fc = torch.nn.Identity()
    ours = copy.deepcopy(model.backbone).double().eval()
    target.double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), ours(x))


def test_export_sees_through_ddp_style_wrapper(model):
    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    assert backbone_state_dict(Wrapper(model)).keys() == backbone_state_dict(model).keys()


def test_infer_arch_from_exported_and_torchvision_state(model):
    assert infer_arch(backbone_state_dict(model)) == model.arch
    assert infer_arch(plain_torchvision(model.arch).state_dict()) == model.arch


def test_infer_arch_refuses_other_depths_and_prefixed_keys():
    with pytest.raises(ValueError, match="unsupported"):
        infer_arch(plain_torchvision("resnet34").state_dict())
    with pytest.raises(ValueError, match="prefix"):
        infer_arch({"backbone." + k: v for k, v in build_backbone("resnet18").state_dict().items()})


def test_unknown_arch_and_projection_head_shape():
    with pytest.raises(ValueError, match="resnet18"):
        build_backbone("vit_b_16")
    head = ProjectionHead(16, 8, 4)
    assert head(torch.randn(5, 16)).shape == (5, 4)


@pytest.mark.parametrize("in_size, kernel, stride, padding, bias, channels_last", [
    (2, 3, 1, 1, False, True),   # ResNet-18 layer4 at 48 px: 2x2 maps
    (3, 3, 2, 1, False, False),  # layer4's first conv: 3x3 -> 2x2, stride 2
    (3, 1, 2, 0, True, True),    # its 1x1 downsample, with a bias
    (1, 3, 1, 1, True, False),   # ResNet-50 layer4 at 32 px: 1x1 maps
])
def test_small_map_convolution_is_the_same_function_and_gradient(in_size, kernel, stride, padding, bias, channels_last,
                                                                  monkeypatch):
    torch.manual_seed(0)
    reference = torch.nn.Conv2d(6, 5, kernel, stride=stride, padding=padding, bias=bias).double()
    small = copy.deepcopy(reference)
    small.__class__ = SmallMapConv2d
    x = torch.randn(4, 6, in_size, in_size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    products = []
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: products.append(1) or torch.matmul(a, b))
    monkeypatch.setattr(torch, "addmm", lambda *args: products.append(1) or torch.ops.aten.addmm(*args))
    x_ref, x_small = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_ref, out_small = reference(x_ref), small(x_small)
    assert products == [1]  # the matrix-product path ran, not F.conv2d
    assert out_small.shape == out_ref.shape
    assert out_small.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(out_small, out_ref)
    grad = torch.randn_like(out_ref)
    out_ref.backward(grad)
    out_small.backward(grad)
    torch.testing.assert_close(x_small.grad, x_ref.grad)
    torch.testing.assert_close(small.weight.grad, reference.weight.grad)
    if bias:
        torch.testing.assert_close(small.bias.grad, reference.bias.grad)


def test_larger_maps_and_the_backbone_keep_plain_convolutions(monkeypatch):
    conv = SmallMapConv2d(4, 4, 3, padding=1)
    calls = []
    monkeypatch.setattr(torch.nn.Conv2d, "forward", lambda self, x: calls.append(x.shape) or x)
    conv(torch.randn(1, 4, 3, 3))  # 9 output pixels: more than MAX_PIXELS
    assert calls == [(1, 4, 3, 3)]
    backbone = build_backbone("resnet18")
    convs = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(type(m) is SmallMapConv2d for m in convs)
