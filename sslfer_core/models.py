"""Backbone + projection head for contrastive pretraining; the backbone exports with plain torchvision
keys so evaluation can load it into an unmodified torchvision ResNet."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision import models as tv_models

ARCHS = ("resnet18", "resnet50")


class SmallMapConv2d(nn.Conv2d):
    """nn.Conv2d that computes outputs of at most MAX_PIXELS pixels on CPU as one matrix product (unfold, then
    columns x weight). oneDNN's backward for such maps is slow: ResNet-18's layer4 at 48 px input has 2x2 maps,
    and one of its 512-channel convolutions took about 120 ms forward and backward in bf16 on one core, against
    32 ms as a matrix product. Same parameters and function; other devices and larger maps use F.conv2d."""

    MAX_PIXELS = 4

    def _out_size(self, size: int, axis: int) -> int:
        span = self.dilation[axis] * (self.kernel_size[axis] - 1) + 1
        return (size + 2 * self.padding[axis] - span) // self.stride[axis] + 1

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        n, _, height, width = x.shape
        out_h, out_w = self._out_size(height, 0), self._out_size(width, 1)
        if out_h * out_w > self.MAX_PIXELS:
            return super().forward(x)
        columns = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        # One (n * pixels, in * k * k) x (in * k * k, out) product; its rows come out pixel-major, i.e. channels_last.
        rows = columns.transpose(1, 2).reshape(n * out_h * out_w, -1)
        weight = self.weight.reshape(self.out_channels, -1).t()
        y = rows @ weight if self.bias is None else torch.addmm(self.bias, rows, weight)
        y = y.reshape(n, out_h, out_w, self.out_channels).permute(0, 3, 1, 2)
        return y if x.is_contiguous(memory_format=torch.channels_last) else y.contiguous()


def _use_small_map_convs(net: nn.Module) -> None:
    """Every nn.Conv2d of `net` becomes a SmallMapConv2d sharing its parameters (state-dict keys unchanged)."""
    for module in net.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = SmallMapConv2d


def build_backbone(arch: str = "resnet50") -> nn.Module:
    """Randomly initialised torchvision ResNet with fc replaced by Identity; .feature_dim is its output width."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; use one of {', '.join(ARCHS)}")
    net = getattr(tv_models, arch)(weights=None)
    net.feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    _use_small_map_convs(net)
    return net


class ProjectionHead(nn.Module):
    """Linear-BN-ReLU-Linear (SimCLR v2 style, one hidden layer); the bias before BN would be cancelled."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ContrastiveModel(nn.Module):
    """backbone -> projector; the hidden width equals the backbone width (2048 for r50, 512 for r18)."""

    def __init__(self, arch: str = "resnet50", proj_dim: int = 128):
        super().__init__()
        self.arch = arch
        self.backbone = build_backbone(arch)
        self.projector = ProjectionHead(self.backbone.feature_dim, self.backbone.feature_dim, proj_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone(x))


def _unwrap(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel (.module) and torch.compile (._orig_mod) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def backbone_state_dict(model: ContrastiveModel) -> dict[str, Tensor]:
    """Backbone weights under plain torchvision keys (conv1.weight, layer1.0...), without fc.*, on CPU."""
    state = _unwrap(model).backbone.state_dict()
    return {k: v.detach().cpu().clone() for k, v in state.items() if not k.startswith("fc.")}


def infer_arch(state_dict: dict) -> str:
    """'resnet18' or 'resnet50' from plain torchvision keys; refuses other depths instead of guessing."""
    keys = set(state_dict)
    if "layer1.0.conv1.weight" not in keys:
        raise ValueError("not a torchvision ResNet state dict (no layer1.0.conv1.weight); strip any prefix first")
    bottleneck = "layer1.0.conv3.weight" in keys
    layer3_blocks = len({k.split(".")[1] for k in keys if k.startswith("layer3.")})
    if bottleneck and layer3_blocks == 6:
        return "resnet50"
    if not bottleneck and layer3_blocks == 2:
        return "resnet18"
    kind = "bottleneck" if bottleneck else "basic-block"
    raise ValueError(f"unsupported ResNet ({kind}, {layer3_blocks} blocks in layer3); supported: {', '.join(ARCHS)}")

