"""Tiny networks for oracle tests: a ResNet with a residual group and a projection, and a VGG."""

import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self, in_channels=1, num_classes=5, width=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(Block(width, width, 1), Block(width, width + 1, 2))
        self.fc = nn.Linear(width + 1, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(self.layer1(x).mean((2, 3)))


class TinyVGG(nn.Module):
    def __init__(self, in_channels=1, num_classes=5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 4, 3, padding=1, bias=False),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 5, 3, padding=1, bias=False),
            nn.BatchNorm2d(5),
            nn.ReLU(),
            nn.Conv2d(5, 3, 3, padding=1),
            nn.ReLU(),
        )  # a producer without BatchNorm, with bias
        self.classifier = nn.Linear(3, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def randomize_batchnorm(model, generator=None):
    """Non-trivial BN statistics and affine parameters, so eval-mode BN is not the identity."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=generator) * 0.2)
    return model


def make(kind, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = {"resnet": TinyResNet, "vgg": TinyVGG}[kind]()
    randomize_batchnorm(model)
    return model.to(dtype).eval()


# ------------------------------------------------------------------------------------------------
# More toys for the gate-exactness tests (tests/test_gate_exactness.py): each exercises one way a
# channel can reach a layer after its gate.


class TinyDenseNet(nn.Module):
    """DenseNet-style: pre-activation BN-ReLU-conv layers read the concatenation of all earlier
    features, so a later BatchNorm sees several groups' channels (each on a slice of its own)."""

    def __init__(self, in_channels=1, num_classes=5, stem=4, growth=3, layers=3):
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.norm0 = nn.BatchNorm2d(stem)
        self.layers = nn.ModuleList()
        width = stem
        for _ in range(layers):
            self.layers.append(
                nn.Sequential(
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                    nn.Conv2d(width, 4, 1, bias=False),
                    nn.BatchNorm2d(4),
                    nn.ReLU(),
                    nn.Conv2d(4, growth, 3, 1, 1),
                )
            )
            width += growth
        self.transition = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 5, 1), nn.AvgPool2d(2))
        self.norm5 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x):
        features = [torch.relu(self.norm0(self.conv0(x)))]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        x = self.transition(torch.cat(features, 1))
        return self.fc(torch.relu(self.norm5(x)).mean((2, 3)))


class ChannelScale(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x):
        return x * self.scale.view(1, -1, 1, 1)


class TinyMobileNet(nn.Module):
    """MobileNet/EfficientNet-style: timm's BatchNormAct2d, depthwise convs with bias (one with no
    BatchNorm after it), squeeze-excitation, a pre-activation BN after a residual add, and a layer
    scale (an unwrapped per-channel parameter that multiplies)."""

    def __init__(self, in_channels=1, num_classes=5):
        super().__init__()
        from timm.layers import BatchNormAct2d

        self.stem = nn.Conv2d(in_channels, 4, 3, 1, 1, bias=False)
        self.bn_stem = BatchNormAct2d(4, act_layer=nn.SiLU)
        self.expand = nn.Conv2d(4, 6, 1)  # bias, no BN: its gate sits at its output
        self.dw1 = nn.Conv2d(6, 6, 3, 1, 1, groups=6)  # depthwise with bias, no BN after it either
        self.dw2 = nn.Conv2d(6, 6, 3, 2, 1, groups=6)
        self.bn_dw2 = BatchNormAct2d(6, act_layer=nn.ReLU)
        self.se_reduce = nn.Conv2d(6, 2, 1)
        self.se_expand = nn.Conv2d(2, 6, 1)
        self.project = nn.Conv2d(6, 4, 1, bias=False)
        self.bn_project = nn.BatchNorm2d(4)
        self.scale = ChannelScale(4)
        self.shortcut = nn.Conv2d(4, 4, 1, 2, bias=False)
        self.bn_post = nn.BatchNorm2d(4)  # pre-activation BN after the add: acts after every gate
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        x = self.bn_stem(self.stem(x))
        h = torch.relu(self.dw1(self.expand(x)))
        h = self.bn_dw2(self.dw2(h))
        h = h * torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(h.mean((2, 3), keepdim=True)))))
        h = self.scale(self.bn_project(self.project(h)))
        x = torch.relu(self.bn_post(h + self.shortcut(x)))
        return self.fc(x.mean((2, 3)))


class TinyGroupedConv(nn.Module):
    """A grouped convolution (groups=2) that is not depthwise."""

    def __init__(self, in_channels=1, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, 1, 1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 5, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


class TinyGroupedMix(nn.Module):
    """Grouped convs whose groupings must all be kept: the stem's 12 channels are read by convs with
    2 and 3 groups (a structure is then 6 channels, one position of each of their groups), and the
    stream those two write (an add) also passes a depthwise conv and a residual grouped conv whose
    input and output are both the stream (6 groups); then a 1x1 conv and a depthwise conv with a
    channel multiplier (groups = inputs < outputs), which removes its own outputs but can remove no
    input (each of its groups has one input channel)."""

    def __init__(self, in_channels=1, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 12, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 12, 3, 1, 1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.conv3 = nn.Conv2d(12, 12, 1, groups=3)  # with bias
        self.bn3 = nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, 1, 1, groups=12, bias=False)
        self.bn_dw = nn.BatchNorm2d(12)
        self.res = nn.Conv2d(12, 12, 3, 1, 1, groups=6, bias=False)
        self.bn_res = nn.BatchNorm2d(12)
        self.conv5 = nn.Conv2d(12, 8, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(8)
        self.mult = nn.Conv2d(8, 16, 3, 2, 1, groups=8, bias=False)
        self.bn_mult = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(x)) + self.bn3(self.conv3(x))
        h = torch.relu(self.bn_dw(self.dw(torch.relu(h))))
        h = torch.relu(h + self.bn_res(self.res(h)))
        h = torch.relu(self.bn5(self.conv5(h)))
        return self.fc(torch.relu(self.bn_mult(self.mult(h))).mean((2, 3)))


class TinyGroupedConcat(nn.Module):
    """A grouped conv (2 groups) reading a concatenation of two groups: each of its groups is one
    producer's channels, so removing a position of every group would reach into the other producer's
    group. Refused."""

    def __init__(self, in_channels=1, num_classes=5):
        super().__init__()
        self.conv_a = nn.Conv2d(in_channels, 4, 3, 1, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(in_channels, 4, 3, 1, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(8, 6, 3, 1, 1, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        x = torch.cat([torch.relu(self.bn_a(self.conv_a(x))), torch.relu(self.bn_b(self.conv_b(x)))], 1)
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class TinyGroupedBare(nn.Module):
    """A grouped conv with no BatchNorm after it: its output structures (one position of each of its
    groups) have no BatchNorm to carry their gates. Refused; its input is pruned."""

    def __init__(self, in_channels=1, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, 1, 1, groups=2)
        self.conv3 = nn.Conv2d(6, 5, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


class ChannelOffset(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x + self.offset.view(1, -1, 1, 1)


class TinyOffset(nn.Module):
    """A per-channel additive parameter outside any known layer, after a gated BatchNorm."""

    def __init__(self, in_channels=1, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.offset = ChannelOffset(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.offset(self.bn1(self.conv1(x)))).mean((2, 3)))


MORE_TOYS = {
    "resnet": TinyResNet,
    "vgg": TinyVGG,
    "dense": TinyDenseNet,
    "mobile": TinyMobileNet,
    "grouped": TinyGroupedConv,
    "grouped_mix": TinyGroupedMix,
    "grouped_concat": TinyGroupedConcat,
    "grouped_bare": TinyGroupedBare,
    "offset": TinyOffset,
}


def make_more(kind, dtype=torch.float64, seed=0):
    """Any toy of ``MORE_TOYS``, default-initialised (tests randomise what they need), in eval mode."""
    torch.manual_seed(seed)
    return MORE_TOYS[kind]().to(dtype).eval()
