"""Model registry: a name -> a randomly initialised ``nn.Module``.

Names: ``resnet<6n+2>`` (CIFAR ResNet; ``shortcut="A"`` or ``"B"``), ``vgg11/13/16/19`` (CIFAR VGG-BN),
``torchvision:<name>`` and ``timm:<name>``. The CIFAR models take ``widths`` and ``width_multiplier``
(see ``width_spec()``), which the bottleneck study uses to rebuild widened networks.
"""

import functools
import inspect
import re
from collections.abc import Callable

from torch import nn

from ..errors import ConfigError, UnknownNameError, check_positive_int
from .cifar_resnet import CifarResNet, PadShortcut, cifar_resnet
from .cifar_vgg import CifarVGG, HalvingMaxPool2d, cifar_vgg
from .zoo import ZOOS

MODELS: dict[str, Callable[..., nn.Module]] = {
    **{f"resnet{d}": functools.partial(cifar_resnet, d) for d in (20, 32, 44, 56, 110)},
    **{f"vgg{d}": functools.partial(cifar_vgg, d) for d in (11, 13, 16, 19)},
}
_PATTERNS = ("resnet<6n+2>", "torchvision:<name>", "timm:<name>")


def available() -> list[str]:
    """Registered names; ``create`` also takes ``resnet<6n+2>``, ``torchvision:<name>``, ``timm:<name>``."""
    return sorted(MODELS)


def _builder(name: str) -> Callable[..., nn.Module]:
    if name in MODELS:
        return MODELS[name]
    depth = re.fullmatch(r"resnet(\d+)", name)
    if depth:
        d = int(depth.group(1))
        if d < 8 or (d - 2) % 6:
            raise ConfigError(
                f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), "
                f"got {name!r}; for ImageNet ResNets use 'torchvision:{name}'"
            )
        return functools.partial(cifar_resnet, d)
    zoo, sep, zoo_name = name.partition(":")
    if sep and zoo in ZOOS:
        return functools.partial(ZOOS[zoo], zoo_name)
    raise UnknownNameError("model", name, available() + list(_PATTERNS))


def create(name: str, num_classes: int, in_channels: int = 3, **options) -> nn.Module:
    """Build model ``name`` (random init) with ``num_classes`` outputs reading ``in_channels`` inputs."""
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    builder = _builder(name)
    if isinstance(builder, functools.partial) and builder.func in (cifar_resnet, cifar_vgg):
        accepted = set(inspect.signature(builder.func).parameters) - {"depth", "num_classes", "in_channels"}
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ConfigError(
                f"model {name!r} takes no option(s) {', '.join(unknown)}; options: {', '.join(sorted(accepted))}"
            )
    return builder(num_classes=num_classes, in_channels=in_channels, **options)


__all__ = ["MODELS", "available", "create", "CifarResNet", "CifarVGG", "PadShortcut", "HalvingMaxPool2d"]
