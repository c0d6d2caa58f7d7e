"""CIFAR ResNet (He et al. 2016, sec. 4.2): 3 stages of BasicBlocks, depth = 6n + 2.

Every width is a named, overridable setting (``width_spec`` / ``widths`` / ``width_multiplier``) so the
bottleneck study can widen single blocks or stages and rebuild the network from the same code.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, check_positive_int

STAGES = ("stage1", "stage2", "stage3")
DEFAULT_STAGE_WIDTHS = (16, 32, 64)


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially, zero-pad the new channels; no parameters.

    A module rather than a lambda so that whole models pickle (``torch.save(model)``).
    """

    def __init__(self, stride: int, pad_front: int, pad_back: int):
        super().__init__()
        self.stride, self.pad_front, self.pad_back = stride, pad_front, pad_back

    def forward(self, x):
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_front}, {self.pad_back})"


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, inner: int, planes: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, inner, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Sequential()
        elif shortcut == "B":
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        else:
            pad = planes - in_planes
            if pad < 0:
                raise ConfigError(
                    f"option-A shortcuts can only widen the residual stream, but a block "
                    f"maps {in_planes} to {planes} channels; use shortcut='B'"
                )
            self.shortcut = PadShortcut(stride, pad // 2, pad - pad // 2)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def init_conv_bn(model: nn.Module) -> None:
    """He initialisation of convolutions (fan-out, as torchvision's ResNets), BN at identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _scaled(width: int, multiplier: float) -> int:
    return max(1, math.floor(width * multiplier + 0.5))  # round half up: no banker's surprises


def resolve_widths(default: dict, widths: dict | None, width_multiplier: float) -> dict:
    """Defaults scaled by ``width_multiplier``, then overridden by the absolute values in ``widths``."""
    if not (isinstance(width_multiplier, (int, float)) and width_multiplier > 0):
        raise ConfigError(f"width_multiplier must be a positive number, got {width_multiplier!r}")
    spec = {key: _scaled(w, width_multiplier) for key, w in default.items()}
    for key, value in (widths or {}).items():
        if key not in spec:
            raise ConfigError(f"unknown width key {key!r}; known: {', '.join(spec)}")
        spec[key] = check_positive_int(f"width {key!r}", value)
    return spec


def _check_positive(**values):
    for name, value in values.items():
        check_positive_int(name, value)


class WidthMixin:
    """``width_spec()`` and ``width_key()`` shared by the CIFAR models."""

    def width_spec(self) -> dict:
        """Width key -> channels, in network order; feed a modified copy back as ``widths=``."""
        return dict(self._width_spec)

    def width_key(self, module_name: str) -> str:
        """The width key that sets the output channels of a producing conv (or of its BatchNorm)."""
        try:
            return self._width_keys[module_name]
        except KeyError:
            raise ConfigError(
                f"{module_name!r} is not a conv or BatchNorm whose output width is a setting of this model"
            ) from None


class CifarResNet(WidthMixin, nn.Module):
    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: str = "B",
        widths: dict | None = None,
        width_multiplier: float = 1.0,
    ):
        super().__init__()
        _check_positive(depth=depth, num_classes=num_classes, in_channels=in_channels)
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
        shortcut = str(shortcut).upper()
        if shortcut not in ("A", "B"):
            raise ConfigError(f"shortcut must be 'A' (zero padding) or 'B' (1x1 projection), got {shortcut!r}")
        n = (depth - 2) // 6
        default = dict(zip(STAGES, DEFAULT_STAGE_WIDTHS))
        default.update({f"layer{s + 1}.{b}": DEFAULT_STAGE_WIDTHS[s] for s in range(3) for b in range(n)})
        spec = resolve_widths(default, widths, width_multiplier)
        self.depth, self.shortcut_type, self._width_spec = depth, shortcut, spec

        self.conv1 = nn.Conv2d(in_channels, spec["stage1"], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(spec["stage1"])
        keys = {"conv1": "stage1", "bn1": "stage1"}
        in_planes = spec["stage1"]
        for s, stage in enumerate(STAGES):
            planes, blocks = spec[stage], []
            for b in range(n):
                block_key, prefix = f"layer{s + 1}.{b}", f"layer{s + 1}.{b}."
                stride = 2 if s > 0 and b == 0 else 1
                block = BasicBlock(in_planes, spec[block_key], planes, stride, shortcut)
                keys.update(
                    {
                        prefix + "conv1": block_key,
                        prefix + "bn1": block_key,
                        prefix + "conv2": stage,
                        prefix + "bn2": stage,
                    }
                )
                if isinstance(block.shortcut, nn.Sequential) and len(block.shortcut):
                    keys.update({prefix + "shortcut.0": stage, prefix + "shortcut.1": stage})
                blocks.append(block)
                in_planes = planes
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self._width_keys = keys
        self.fc = nn.Linear(in_planes, num_classes)
        # Option A: the zero padding is invisible to torch-pruning's dependency graph, so every layer
        # writing into the residual stream must stay unpruned (read by sosp.structures).
        self.sosp_unprunable = (
            ("conv1",) + tuple(f"layer{s + 1}.{b}.conv2" for s in range(3) for b in range(n)) if shortcut == "A" else ()
        )

        init_conv_bn(self)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def cifar_resnet(
    depth: int,
    num_classes: int = 10,
    in_channels: int = 3,
    shortcut: str = "B",
    widths: dict | None = None,
    width_multiplier: float = 1.0,
) -> CifarResNet:
    return CifarResNet(depth, num_classes, in_channels, shortcut, widths, width_multiplier)
