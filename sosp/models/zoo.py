"""torchvision and timm classifiers by name, always randomly initialised (published weights: :mod:`sosp.weights`)."""

import difflib

from torch import nn

from ..errors import ConfigError, UnknownNameError


def _unknown(kind: str, name: str, names: list[str]) -> UnknownNameError:
    # The zoos hold hundreds of names: list the closest few, not all of them.
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    return UnknownNameError(kind, name, close or sorted(names)[:10])


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the stem conv for one reading ``in_channels`` inputs, keeping every other hyper-parameter."""
    for name, conv in model.named_modules():  # noqa: B007 (name is used after the loop)
        if isinstance(conv, nn.Conv2d):
            break
    else:
        raise ConfigError(f"cannot set in_channels={in_channels}: {type(model).__name__} has no Conv2d")
    if conv.groups != 1:
        raise ConfigError(f"cannot set in_channels={in_channels}: the first conv {name!r} is grouped")
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        1,
        conv.bias is not None,
        conv.padding_mode,
    )
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def torchvision_model(name: str, num_classes: int, in_channels: int = 3, **options) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise _unknown("torchvision model", name, names)
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    except TypeError as err:  # an option the constructor does not take
        raise ConfigError(f"torchvision:{name}: {err}") from err
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def timm_model(name: str, num_classes: int, in_channels: int = 3, **options) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise _unknown("timm model", name, timm.list_models())
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **options)
    except TypeError as err:
        raise ConfigError(f"timm:{name}: {err}") from err


ZOOS = {"torchvision": torchvision_model, "timm": timm_model}
