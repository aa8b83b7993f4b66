"""FCN on a dilated ResNet-50/101 at output stride 8: torchvision's fcn_resnet50/101.

The network is torchvision's, so its weights load and give its outputs: a ResNet
v1.5 backbone (the stride of a bottleneck on its 3x3 convolution) with
``replace_stride_with_dilation=[False, True, True]`` (layer3 dilated by 2, layer4
by 4, the first block of each keeping the previous stage's dilation, as
torchvision's ``_make_layer`` does), an FCNHead on layer4 (3x3 convolution to a
quarter of the channels without bias, BatchNorm, ReLU, dropout, 1x1 convolution to
the classes) and optionally the auxiliary FCNHead on layer3, each upsampled
bilinearly to the input size (``F.interpolate(..., align_corners=False)``).

Layers are flat and named after torchvision's modules, a BatchNorm after
``layer`` being ``<layer>_bn`` as everywhere in fcn_jax (``torchvision_names``
gives the whole map):

  conv1, conv1_bn                                backbone.conv1, backbone.bn1
  layer{s}_{i}_conv{k}, layer{s}_{i}_conv{k}_bn  backbone.layer{s}.{i}.conv{k}, .bn{k}
  layer{s}_{i}_downsample, ..._downsample_bn     backbone.layer{s}.{i}.downsample.0, .1
  classifier_conv, classifier_conv_bn, classifier_score           classifier.0, .1, .4
  aux_classifier_conv, aux_classifier_conv_bn, aux_classifier_score  aux_classifier.0, .1, .4
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcn_jax.batch_norm import BatchNorm
from fcn_jax.models import batch_norm_name

# Bottleneck blocks of layer1 ... layer4.
BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
BACKBONES = tuple(BLOCKS)
# Output stride 8: layer2 strides, layer3 and layer4 dilate instead.
STAGE_STRIDES, STAGE_DILATIONS = (1, 2, 1, 1), (1, 1, 2, 4)
EXPANSION = 4  # A bottleneck's output has 4x its inner width.
# Each output's FCNHead (torchvision's module name) and the stage it reads.
HEADS = {"out": ("classifier", 4), "aux": ("aux_classifier", 3)}
# torchvision's FCNHead is Sequential(conv, bn, relu, dropout, conv): our layer -> its index.
HEAD_INDICES = {"conv": 0, batch_norm_name("conv"): 1, "score": 4}

# torchvision's ResNet initialisation (kaiming_normal_, fan_out); the score layers as
# mmsegmentation's (normal, std 0.01).
_he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_score_init = nn.initializers.normal(0.01)


def block_name(stage: int, index: int) -> str:
    return f"layer{stage}_{index}"


def torchvision_names(backbone: str, aux_head: bool) -> dict[str, str]:
    """Our layer -> torchvision's module in fcn_resnet50/101 (``backbone.layer1.0.conv1``)."""
    names = {"conv1": "backbone.conv1", batch_norm_name("conv1"): "backbone.bn1"}
    for stage, blocks in enumerate(BLOCKS[backbone], start=1):
        for i in range(blocks):
            ours, theirs = block_name(stage, i), f"backbone.layer{stage}.{i}"
            for k in (1, 2, 3):
                names[f"{ours}_conv{k}"] = f"{theirs}.conv{k}"
                names[batch_norm_name(f"{ours}_conv{k}")] = f"{theirs}.bn{k}"
            if i == 0:  # The projection shortcut of each stage's first block.
                names[f"{ours}_downsample"] = f"{theirs}.downsample.0"
                names[batch_norm_name(f"{ours}_downsample")] = f"{theirs}.downsample.1"
    for head, _ in heads(aux_head).values():
        names.update({f"{head}_{layer}": f"{head}.{i}" for layer, i in HEAD_INDICES.items()})
    return names


def heads(aux_head: bool) -> dict[str, tuple[str, int]]:
    return HEADS if aux_head else {"out": HEADS["out"]}


def backbone_of(params) -> str | None:
    """resnet50 or resnet101 from the layer names of ``params``; None if not a ResNet."""
    if "conv1" not in params:
        return None
    layer3 = sum(1 for i in range(max(BLOCKS["resnet101"]) + 1) if f"layer3_{i}_conv1" in params)
    for name, blocks in BLOCKS.items():
        if blocks[2] == layer3:
            return name
    return None


class ResNetFCN(nn.Module):
    """``model.apply(variables, images, train=False)`` -> {"out": logits, "aux": logits}.

    images: float[N, H, W, 3], normalised (torchvision: the ``torch`` normalisation),
    any size. Logits are float32[N, H, W, num_classes]; "aux" (the layer3 head)
    only with ``aux_head``. BatchNorm and dropout behave as in ``models.FCN``:
    batch statistics over the global batch when ``train`` (apply with
    ``mutable=["batch_stats"]``), unless ``freeze_batch_norm``.
    """

    backbone: str = "resnet50"
    num_classes: int = 21
    aux_head: bool = False
    base_width: int = 64  # conv1's width; layer s has base_width * 2**(s-1) * 4 channels.
    dropout_rate: float = 0.1  # In both heads, as torchvision's FCNHead.
    dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.
    freeze_batch_norm: bool = False  # Use the running statistics in training too.

    def __post_init__(self):
        if self.backbone not in BLOCKS:
            raise ValueError(f"ResNetFCN backbone={self.backbone!r} is not one of {BACKBONES}")
        super().__post_init__()

    @nn.compact
    def __call__(self, images, *, train: bool):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"ResNetFCN expects images of shape [N, H, W, 3], got {images.shape}")
        n, height, width, _ = images.shape

        def conv(x, name, features, size, stride=1, dilation=1, head_score=False):
            pad = dilation * (size // 2)
            return nn.Conv(
                features,
                (size, size),
                strides=stride,
                padding=((pad, pad), (pad, pad)),
                kernel_dilation=dilation,
                use_bias=head_score,  # Only the score layers: a BatchNorm follows the others.
                dtype=self.dtype,
                kernel_init=_score_init if head_score else _he_fan_out,
                name=name,
            )(x)

        def conv_bn(x, name, *args, relu=True, **kwargs):
            frozen = not train or self.freeze_batch_norm
            x = BatchNorm(frozen, self.dtype, name=batch_norm_name(name))(
                conv(x, name, *args, **kwargs)
            )
            return nn.relu(x) if relu else x

        def bottleneck(x, name, planes, stride, dilation, first):
            shortcut = x
            if first:  # Every stage starts by changing the width: a projection shortcut.
                shortcut = conv_bn(
                    x, f"{name}_downsample", planes * EXPANSION, 1, stride, relu=False
                )
            y = conv_bn(x, f"{name}_conv1", planes, 1)
            y = conv_bn(y, f"{name}_conv2", planes, 3, stride, dilation)
            y = conv_bn(y, f"{name}_conv3", planes * EXPANSION, 1, relu=False)
            return nn.relu(y + shortcut)

        def head(x, name):
            x = conv_bn(x, f"{name}_conv", x.shape[-1] // 4, 3)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = conv(x, f"{name}_score", self.num_classes, 1, head_score=True)
            # Bilinear, half-pixel centres: F.interpolate(align_corners=False) when upsampling.
            shape = (n, height, width, self.num_classes)
            x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # float32, float64 kept.
            return jax.image.resize(x, shape, "bilinear", antialias=False)

        x = conv_bn(images.astype(self.dtype), "conv1", self.base_width, 7, 2)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        stages, previous_dilation = {}, 1
        for stage, blocks in enumerate(BLOCKS[self.backbone], start=1):
            planes, dilation = self.base_width * 2 ** (stage - 1), STAGE_DILATIONS[stage - 1]
            for i in range(blocks):
                first = i == 0
                x = bottleneck(
                    x,
                    block_name(stage, i),
                    planes,
                    STAGE_STRIDES[stage - 1] if first else 1,
                    previous_dilation if first else dilation,
                    first,
                )
            stages[stage], previous_dilation = x, dilation
        return {key: head(stages[s], name) for key, (name, s) in heads(self.aux_head).items()}
