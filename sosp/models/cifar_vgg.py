"""CIFAR VGG with BatchNorm (Simonyan & Zisserman 2015, as adapted for CIFAR): one linear classifier."""

import torch
from torch import nn

from .cifar_resnet import WidthMixin, _check_positive, init_conv_bn, resolve_widths

CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class HalvingMaxPool2d(nn.MaxPool2d):
    """2x2 max pooling, stride 2, that passes inputs with H or W < 2 through unchanged.

    VGG pools five times, so an 8x8 input (the embedded digits data set) reaches 1x1 after three pools
    and a plain MaxPool2d would fail on the fourth. Passing 1-pixel maps through keeps one architecture
    for every input size while leaving 32x32 and larger inputs exactly as in the standard network.
    """

    def __init__(self):
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x):
        if x.shape[-2] < 2 or x.shape[-1] < 2:
            return x
        return super().forward(x)


class CifarVGG(WidthMixin, nn.Module):
    def __init__(
        self,
        depth: int = 16,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: dict | None = None,
        width_multiplier: float = 1.0,
    ):
        super().__init__()
        _check_positive(num_classes=num_classes, in_channels=in_channels)
        config = CONFIGS[depth]
        default = {f"conv{i}": w for i, w in enumerate(w for w in config if w != "M")}
        spec = resolve_widths(default, widths, width_multiplier)
        self.depth, self._width_spec, self._width_keys = depth, spec, {}

        layers, channels, conv = [], in_channels, 0
        for item in config:
            if item == "M":
                layers.append(HalvingMaxPool2d())
                continue
            key, width = f"conv{conv}", spec[f"conv{conv}"]
            self._width_keys.update({f"features.{len(layers)}": key, f"features.{len(layers) + 1}": key})
            # ReLU not in place: hooks that keep a BN output (gates, curvature) must not see it overwritten.
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels, conv = width, conv + 1
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

        init_conv_bn(self)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def cifar_vgg(
    depth: int, num_classes: int = 10, in_channels: int = 3, widths: dict | None = None, width_multiplier: float = 1.0
) -> CifarVGG:
    return CifarVGG(depth, num_classes, in_channels, widths, width_multiplier)
