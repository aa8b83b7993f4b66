"""PyTorch reference FCNs with the semantics of the reference Caffe nets.

The modules reproduce wkentaro/pytorch-fcn's FCN32s, FCN16s, FCN8s and
FCN8sAtOnce (layer names, so ``state_dict()`` has that layout; padding 100 on
conv1_1, ceil-mode pools, unpadded 7x7 fc6, bias-free transposed convolutions,
the crops of its ``forward``), parameterised by widths so tests can run narrow
nets: convolution widths B, B, 2B, 2B, 4B x3, 8B x3, 8B x3 and fc width F.

``TorchvisionVGG16`` is the trunk in torchvision's VGG16 layout (``features``,
``classifier``), with fc6 applied as a 7x7 convolution whose weight is
``classifier.0.weight`` viewed (F, C, 7, 7), the (C, H, W) flatten of torchvision.

``FCNResNet`` restates torchvision's fcn_resnet50/101 (``import_torchvision`` gets
the real one where it installs).

Used by tests/test_convert.py and tests/test_resnet.py; needs torch.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import nn

# (name, width multiplier) of the VGG-16 convolutions, in order; a pool follows each stage.
VGG16_STAGES = (
    (("conv1_1", 1), ("conv1_2", 1)),
    (("conv2_1", 2), ("conv2_2", 2)),
    (("conv3_1", 4), ("conv3_2", 4), ("conv3_3", 4)),
    (("conv4_1", 8), ("conv4_2", 8), ("conv4_3", 8)),
    (("conv5_1", 8), ("conv5_2", 8), ("conv5_3", 8)),
)
CONV_NAMES = tuple(name for stage in VGG16_STAGES for name, _ in stage)
BACKBONE_NAMES = CONV_NAMES + ("fc6", "fc7")
# Index of each convolution in torchvision's ``vgg16().features``.
TORCHVISION_FEATURES = dict(zip(CONV_NAMES, (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)))
# ... and of vgg16_bn().features, each convolution's BatchNorm at the next index.
TORCHVISION_BN_FEATURES = dict(zip(CONV_NAMES, (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)))
# Keras VGG16 layer names of the same layers.
KERAS_NAMES = {
    **{f"conv{s}_{i}": f"block{s}_conv{i}" for s in range(1, 6) for i in range(1, 4)},
    "fc6": "fc1",
    "fc7": "fc2",
}


def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Random non-trivial weights: He-scaled kernels, nonzero biases, no saturation;
    BatchNorms get random scales, offsets and running statistics."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.ConvTranspose2d):
                # Weight (in, out, k, k); each output cell sums about 4 * in taps.
                m.weight.normal_(0.0, 1.0 / math.sqrt(4 * m.in_channels), generator=generator)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                std = math.sqrt(2.0 / m.weight[0].numel())
                m.weight.normal_(0.0, std, generator=generator)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1, generator=generator)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0.0, 0.2, generator=generator)
                m.running_mean.normal_(0.0, 0.2, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
                m.num_batches_tracked.zero_()


class VGG16Trunk(nn.Module):
    """conv1_1 ... conv5_3 (Caffe padding), fc6, fc7 as convolutions; returns pool3, pool4, fc7.

    With ``batch_norm`` (torchvision's vgg16_bn), a BatchNorm ``<conv>_bn`` follows each
    convolution.
    """

    batch_norm = False

    def __init__(self, base_width: int = 64, fc_width: int = 4096):
        super().__init__()
        in_ch = 3
        for stage in VGG16_STAGES:
            for name, mult in stage:
                out_ch = base_width * mult
                pad = 100 if name == "conv1_1" else 1
                setattr(self, name, nn.Conv2d(in_ch, out_ch, 3, padding=pad))
                if self.batch_norm:
                    setattr(self, f"{name}_bn", nn.BatchNorm2d(out_ch))
                in_ch = out_ch
        self.fc6 = nn.Conv2d(in_ch, fc_width, 7)
        self.fc7 = nn.Conv2d(fc_width, fc_width, 1)
        self.drop = nn.Dropout2d()
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def randomise(self, seed: int):
        _randomise(self, torch.Generator().manual_seed(seed))
        return self

    def trunk(self, x):
        pools = []
        for stage in VGG16_STAGES:
            for name, _ in stage:
                x = getattr(self, name)(x)
                if self.batch_norm:
                    x = getattr(self, f"{name}_bn")(x)
                x = torch.relu(x)
            x = self.pool(x)
            pools.append(x)
        x = self.drop(torch.relu(self.fc6(x)))
        x = self.drop(torch.relu(self.fc7(x)))
        return pools[2], pools[3], x


class FCN32s(VGG16Trunk):
    def __init__(self, num_classes=21, base_width=64, fc_width=4096):
        super().__init__(base_width, fc_width)
        self.score_fr = nn.Conv2d(fc_width, num_classes, 1)
        self.upscore = nn.ConvTranspose2d(num_classes, num_classes, 64, stride=32, bias=False)

    def forward(self, x):
        _, _, h = self.trunk(x)
        h = self.upscore(self.score_fr(h))
        return h[:, :, 19 : 19 + x.size(2), 19 : 19 + x.size(3)].contiguous()


class FCN16s(VGG16Trunk):
    def __init__(self, num_classes=21, base_width=64, fc_width=4096):
        super().__init__(base_width, fc_width)
        self.score_fr = nn.Conv2d(fc_width, num_classes, 1)
        self.score_pool4 = nn.Conv2d(8 * base_width, num_classes, 1)
        self.upscore2 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)
        self.upscore16 = nn.ConvTranspose2d(num_classes, num_classes, 32, stride=16, bias=False)

    def forward(self, x):
        _, pool4, h = self.trunk(x)
        upscore2 = self.upscore2(self.score_fr(h))
        h = self.score_pool4(pool4)
        h = h[:, :, 5 : 5 + upscore2.size(2), 5 : 5 + upscore2.size(3)]
        h = self.upscore16(upscore2 + h)
        return h[:, :, 27 : 27 + x.size(2), 27 : 27 + x.size(3)].contiguous()


class FCN8s(VGG16Trunk):
    pool4_scale = 1.0
    pool3_scale = 1.0

    def __init__(self, num_classes=21, base_width=64, fc_width=4096):
        super().__init__(base_width, fc_width)
        self.score_fr = nn.Conv2d(fc_width, num_classes, 1)
        self.score_pool3 = nn.Conv2d(4 * base_width, num_classes, 1)
        self.score_pool4 = nn.Conv2d(8 * base_width, num_classes, 1)
        self.upscore2 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)
        self.upscore8 = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)

    def randomise(self, seed: int):
        super().randomise(seed)
        with torch.no_grad():  # Undo the at-once feature scaling, so the skips matter.
            self.score_pool4.weight /= self.pool4_scale
            self.score_pool3.weight /= self.pool3_scale
        return self

    def forward(self, x):
        pool3, pool4, h = self.trunk(x)
        upscore2 = self.upscore2(self.score_fr(h))
        h = self.score_pool4(pool4 * self.pool4_scale)
        h = h[:, :, 5 : 5 + upscore2.size(2), 5 : 5 + upscore2.size(3)]
        upscore_pool4 = self.upscore_pool4(upscore2 + h)
        h = self.score_pool3(pool3 * self.pool3_scale)
        h = h[:, :, 9 : 9 + upscore_pool4.size(2), 9 : 9 + upscore_pool4.size(3)]
        h = self.upscore8(upscore_pool4 + h)
        return h[:, :, 31 : 31 + x.size(2), 31 : 31 + x.size(3)].contiguous()


class FCN8sAtOnce(FCN8s):
    """FCN-8s trained at once: pool4 scaled by 0.01 and pool3 by 0.0001 before scoring."""

    pool4_scale = 0.01
    pool3_scale = 0.0001


class FCN8sBN(FCN8s):
    """FCN-8s on torchvision's vgg16_bn trunk (BatchNorm after each VGG convolution)."""

    batch_norm = True


NETS = {
    "fcn32s": FCN32s,
    "fcn16s": FCN16s,
    "fcn8s": FCN8s,
    "fcn8s_at_once": FCN8sAtOnce,
    "fcn8s_bn": FCN8sBN,
}


def reference_net(
    variant, *, at_once=False, batch_norm=False, num_classes=21, base_width=8, fc_width=32, seed=0
):
    """A randomly initialised reference net in eval mode."""
    key = "fcn8s_at_once" if at_once else variant + "_bn" * batch_norm
    with torch.device("meta"):  # Skip torch's default initialisation: every weight is drawn.
        net = NETS[key](num_classes, base_width, fc_width)
    return net.to_empty(device="cpu").randomise(seed).eval()


class TorchvisionVGG16(nn.Module):
    """VGG-16 in torchvision's layout (features, classifier), padding 100 on features.0."""

    def __init__(self, base_width: int = 64, fc_width: int = 4096, seed: int = 0):
        super().__init__()
        layers, in_ch = [], 3
        for stage in VGG16_STAGES:
            for name, mult in stage:
                out_ch = base_width * mult
                pad = 100 if name == "conv1_1" else 1
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=pad), nn.ReLU(inplace=True)]
                in_ch = out_ch
            layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(in_ch * 49, fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(fc_width, fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(fc_width, 1000),
        )
        _randomise(self, torch.Generator().manual_seed(seed))

    def fc7(self, x):
        """fc7 features of a fully convolutional pass (fc6 as a 7x7 convolution)."""
        x = self.features(x)
        fc6, fc7 = self.classifier[0], self.classifier[3]
        w6 = fc6.weight.view(fc6.out_features, -1, 7, 7)
        x = torch.relu(nn.functional.conv2d(x, w6, fc6.bias))
        w7 = fc7.weight.view(fc7.out_features, fc7.in_features, 1, 1)
        return torch.relu(nn.functional.conv2d(x, w7, fc7.bias))


def backbone_state(net: nn.Module) -> dict:
    """The caffe-layout backbone entries (conv1_1.weight ... fc7.bias) of a reference net."""
    return {
        k: v.detach().clone()
        for k, v in net.state_dict().items()
        if k.split(".")[0] in BACKBONE_NAMES
    }


def to_torchvision(net: nn.Module, seed: int = 1) -> dict:
    """A torchvision VGG-16 (or, for a BatchNorm trunk, vgg16_bn) state dict holding
    ``net``'s backbone (classifier.6 random)."""
    sd = net.state_dict()
    out = {}
    indices = TORCHVISION_BN_FEATURES if net.batch_norm else TORCHVISION_FEATURES
    for name, idx in indices.items():
        for p in ("weight", "bias"):
            out[f"features.{idx}.{p}"] = sd[f"{name}.{p}"].detach().clone()
        if net.batch_norm:
            for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                out[f"features.{idx + 1}.{p}"] = sd[f"{name}_bn.{p}"].detach().clone()
    fc6, fc7 = sd["fc6.weight"], sd["fc7.weight"]
    out["classifier.0.weight"] = fc6.reshape(fc6.shape[0], -1).clone()  # (C, H, W) flatten.
    out["classifier.0.bias"] = sd["fc6.bias"].clone()
    out["classifier.3.weight"] = fc7.reshape(fc7.shape[0], -1).clone()
    out["classifier.3.bias"] = sd["fc7.bias"].clone()
    g = torch.Generator().manual_seed(seed)
    out["classifier.6.weight"] = torch.randn((1000, fc7.shape[0]), generator=g) * 0.01
    out["classifier.6.bias"] = torch.randn((1000,), generator=g) * 0.01
    return out


def keras_weights(net: nn.Module, fc6_order: str = "HWC") -> dict:
    """{keras layer name: (kernel, bias)} numpy arrays in Keras VGG16's layout.

    Conv kernels (3, 3, in, out); fc1 kernel (C*7*7, F) flattened in (H, W, C)
    order (Keras' Flatten of an NHWC map); fc2 kernel (F, F). ``fc6_order="CHW"``
    flattens fc1 the wrong way, for negative checks.
    """
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    out = {}
    for name in CONV_NAMES:
        out[KERAS_NAMES[name]] = (sd[f"{name}.weight"].transpose(2, 3, 1, 0), sd[f"{name}.bias"])
    w6 = sd["fc6.weight"]  # (F, C, 7, 7)
    perm = {"HWC": (2, 3, 1, 0), "CHW": (1, 2, 3, 0)}[fc6_order]
    out["fc1"] = (w6.transpose(*perm).reshape(-1, w6.shape[0]), sd["fc6.bias"])
    out["fc2"] = (sd["fc7.weight"][:, :, 0, 0].T, sd["fc7.bias"])
    return out


def write_keras_h5(path, weights: dict, *, model_weights: bool = False) -> None:
    """Write ``weights`` (from ``keras_weights``) as a Keras save_weights .h5 file."""
    import h5py
    import numpy as np

    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if model_weights else f
        names = list(weights)
        root.attrs["layer_names"] = np.array([n.encode() for n in names])
        for name, (kernel, bias) in weights.items():
            g = root.create_group(name)
            wnames = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            g.attrs["weight_names"] = np.array(wnames)
            g.create_dataset(wnames[0].decode(), data=kernel)
            g.create_dataset(wnames[1].decode(), data=bias)


class MindSporeTutorialFCN8s(nn.Module):
    """The MindSpore FCN-8s tutorial's network restated in PyTorch, with its layer names.

    VGG-16 whose every convolution (fc6 and fc7 included) is bias-free and followed by
    BatchNorm and ReLU (``convN`` = [conv, BatchNorm, ReLU] * n), MindSpore's "same"
    padding (3x3 by 1, fc6 by 3), floor-mode 2x2 pools, bias-free scores, and
    ``Conv2dTranspose(pad_mode="same")`` upsampling: a transposed convolution cropped by
    (kernel - stride) / 2 on each side. Takes inputs whose sides are multiples of 32.
    """

    def __init__(self, num_classes=21, base_width=64, fc_width=4096):
        super().__init__()
        widths, in_ch = [], 3
        for index, stage in enumerate(VGG16_STAGES, start=1):
            layers = []
            for _, mult in stage:
                out_ch = base_width * mult
                layers += [
                    nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out_ch),
                    nn.ReLU(),
                ]
                in_ch = out_ch
            setattr(self, f"conv{index}", nn.Sequential(*layers))
            widths.append(in_ch)
        self.conv6 = nn.Sequential(
            nn.Conv2d(in_ch, fc_width, 7, padding=3, bias=False),
            nn.BatchNorm2d(fc_width),
            nn.ReLU(),
        )
        self.conv7 = nn.Sequential(
            nn.Conv2d(fc_width, fc_width, 1, bias=False), nn.BatchNorm2d(fc_width), nn.ReLU()
        )
        self.pool = nn.MaxPool2d(2, stride=2)
        self.score_fr = nn.Conv2d(fc_width, num_classes, 1, bias=False)
        self.score_pool4 = nn.Conv2d(widths[3], num_classes, 1, bias=False)
        self.score_pool3 = nn.Conv2d(widths[2], num_classes, 1, bias=False)

        def up(kernel, stride):
            pad = (kernel - stride) // 2
            return nn.ConvTranspose2d(num_classes, num_classes, kernel, stride, pad, bias=False)

        self.upscore2, self.upscore_pool4, self.upscore8 = up(4, 2), up(4, 2), up(16, 8)

    def forward(self, x):
        pools = []
        for index in range(1, 6):
            x = self.pool(getattr(self, f"conv{index}")(x))
            pools.append(x)
        x = self.conv7(self.conv6(x))
        x = self.upscore2(self.score_fr(x)) + self.score_pool4(pools[3])
        x = self.upscore_pool4(x) + self.score_pool3(pools[2])
        return self.upscore8(x)


def mindspore_tutorial_net(num_classes=21, base_width=8, fc_width=32, seed=0):
    """A randomly initialised restatement of the tutorial's network, in eval mode."""
    net = MindSporeTutorialFCN8s(num_classes, base_width, fc_width)
    _randomise(net, torch.Generator().manual_seed(seed))
    return net.eval()


# PyTorch's BatchNorm2d names -> MindSpore's.
_MINDSPORE_BN = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}


def to_mindspore(net: MindSporeTutorialFCN8s) -> dict:
    """{MindSpore parameter name: numpy array} of the restated tutorial network."""
    out = {}
    for name, value in net.state_dict().items():
        module, param = name.rsplit(".", 1)
        if param == "num_batches_tracked":
            continue
        if isinstance(net.get_submodule(module), nn.BatchNorm2d):
            name = f"{module}.{_MINDSPORE_BN[param]}"
        out[name] = value.detach().numpy().copy()
    return out


# torchvision's bottleneck blocks per stage, and the FCN's output stride 8
# (replace_stride_with_dilation=[False, True, True]).
RESNET_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
RESNET_STRIDES, RESNET_DILATE = (1, 2, 2, 2), (False, False, True, True)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride is on the 3x3 convolution."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class DilatedResNet(nn.Module):
    """torchvision's resnet50/101 trunk with replace_stride_with_dilation=[False, True, True],
    as IntermediateLayerGetter keeps it (no avgpool, fc): returns layer3 ("aux") and layer4
    ("out"). Widths are base_width * (1, 2, 4, 8) (* 4 out of each block); torchvision's 64."""

    def __init__(self, blocks, base_width=64):
        super().__init__()
        self.inplanes, self.dilation = base_width, 1
        self.conv1 = nn.Conv2d(3, base_width, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        for stage, (n, stride, dilate) in enumerate(
            zip(blocks, RESNET_STRIDES, RESNET_DILATE), start=1
        ):
            layer = self._make_layer(base_width * 2 ** (stage - 1), n, stride, dilate)
            setattr(self, f"layer{stage}", layer)

    def _make_layer(self, planes, blocks, stride, dilate):
        """torchvision's ResNet._make_layer: the first block keeps the previous dilation."""
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [
            Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        aux = self.layer3(x)
        return {"aux": aux, "out": self.layer4(aux)}


class FCNHead(nn.Sequential):
    """torchvision's FCNHead: conv 3x3 to in/4 (no bias), BatchNorm, ReLU, dropout, 1x1 conv."""

    def __init__(self, in_channels, channels):
        inter = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Conv2d(inter, channels, 1),
        )


class FCNResNet(nn.Module):
    """torchvision's fcn_resnet50/101 (_SimpleSegmentationModel): heads upsampled bilinearly
    with align_corners=False; returns {"out": ..., "aux": ...} ("aux" with ``aux_loss``)."""

    def __init__(self, backbone="resnet50", num_classes=21, aux_loss=True, base_width=64):
        super().__init__()
        self.backbone = DilatedResNet(RESNET_BLOCKS[backbone], base_width)
        self.classifier = FCNHead(base_width * 32, num_classes)
        self.aux_classifier = FCNHead(base_width * 16, num_classes) if aux_loss else None

    def forward(self, x):
        size = x.shape[-2:]
        features = self.backbone(x)
        heads = {"out": self.classifier}
        if self.aux_classifier is not None:
            heads["aux"] = self.aux_classifier
        return {
            key: nn.functional.interpolate(
                head(features[key]), size=size, mode="bilinear", align_corners=False
            )
            for key, head in heads.items()
        }


def fcn_resnet(backbone="resnet50", *, num_classes=21, aux_loss=True, base_width=8, seed=0):
    """A randomly initialised restated fcn_resnet50/101 (random BatchNorm statistics too),
    in eval mode."""
    with torch.device("meta"):  # Skip torch's default initialisation: every weight is drawn.
        net = FCNResNet(backbone, num_classes, aux_loss, base_width)
    net = net.to_empty(device="cpu")
    _randomise(net, torch.Generator().manual_seed(seed))
    return net.eval()


def imagenet_resnet_state(net: FCNResNet, seed: int = 1) -> dict:
    """The state dict of an ImageNet torchvision resnet50/101 holding ``net``'s backbone
    (keys without ``backbone.``; ``fc`` random, as a classifier has it)."""
    out = {
        k.removeprefix("backbone."): v.detach().clone()
        for k, v in net.state_dict().items()
        if k.startswith("backbone.")
    }
    width = net.classifier[0].in_channels
    g = torch.Generator().manual_seed(seed)
    out["fc.weight"] = torch.randn(1000, width, generator=g) / math.sqrt(width)
    out["fc.bias"] = torch.zeros(1000)
    return out


_TORCHVISION_OPS: list = []  # Operators declared for torchvision's import (below).


def import_torchvision():
    """torchvision, or None where it is not installed.

    PyPI's torchvision wheel is built against PyPI's (CUDA) torch; beside a CPU-only
    torch its C++ operators do not load, and torchvision 0.28's import then stops at
    registering fake kernels for ``torchvision::nms`` and ``qnms``. Declaring those two
    operators lets the pure-Python models import: they use none of the C++ operators.
    """
    try:
        import torchvision
    except ImportError:
        return None
    except RuntimeError as e:
        if "torchvision::nms does not exist" not in str(e):
            raise
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_OPS.append(library)  # The operators live as long as the library object.
        import torchvision
    return torchvision
