"""Contrastive model shapes and the torchvision-compatible backbone export."""
import pytest
import torch
from torchvision import models as tv_models

from sslfer_core.models import ContrastiveModel, ProjectionHead, backbone_state_dict, build_backbone, infer_arch

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
    # The loaded network computes the same features as our backbone.
    target.fc = torch.nn.Identity()
    model.eval(), target.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(x), model.backbone(x))


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
