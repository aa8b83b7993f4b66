"""FCN-32s, FCN-16s and FCN-8s on a VGG-16 backbone, as Flax Linen modules.

Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic
Segmentation" (CVPR 2015, TPAMI 2016). Parameters are named after the layers of
the reference Caffe nets (conv1_1 ... conv5_3, fc6, fc7, score_fr, score_pool4,
score_pool3, upscore...), so checkpoints and weight converters read naturally.

Two geometries:
  * ``caffe``: an exact port of the reference nets, so that published weights
    give the published numbers: conv1_1 padded by 100, ceil-mode pooling, fc6
    unpadded, unpadded transposed convolutions and the reference crop offsets.
  * ``same``: every convolution keeps its input size (fc6 padded by 3) and the
    upsampled maps are cropped so each coarse cell lands on the centre of the
    pixels it covers; about half the FLOPs of ``caffe`` at 224x224.
Both return logits of exactly the input's height and width.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax.batch_norm import BatchNorm

VARIANTS = ("fcn32s", "fcn16s", "fcn8s")
GEOMETRIES = ("caffe", "same")
# vgg16: the Caffe/torchvision VGG-16. vgg16_bn: a BatchNorm after every VGG convolution.
BACKBONES = ("vgg16", "vgg16_bn")
FC6_IMPLS = ("matmul", "conv")
# How the head starts (score layers, upsampling): fcn, the reference nets' zero scores and
# bilinear upsampling; xavier_uniform, MindSpore's FCN-8s (weight_init="xavier_uniform" on
# its score Conv2d and Conv2dTranspose layers: U(+-sqrt(6 / (fan_in + fan_out)))).
HEAD_INITS = ("fcn", "xavier_uniform")
MIN_INPUT_SIZE = 32  # One cell of the stride-32 score map.

# VGG-16 convolution layers per stage, named as in Caffe; widths are base_width * multiplier.
VGG16_STAGES = (
    (("conv1_1", "conv1_2"), 1),
    (("conv2_1", "conv2_2"), 2),
    (("conv3_1", "conv3_2", "conv3_3"), 4),
    (("conv4_1", "conv4_2", "conv4_3"), 8),
    (("conv5_1", "conv5_2", "conv5_3"), 8),
)
BACKBONE_LAYERS = tuple(n for names, _ in VGG16_STAGES for n in names) + ("fc6", "fc7")
# The FCN head's layers.
SCORE_LAYERS = ("score_fr", "score_pool4", "score_pool3")
# Transposed convolutions and their upsampling factors (kernel 2f, stride f).
UPSAMPLE_FACTORS = {
    "upscore": 32,
    "upscore2": 2,
    "upscore16": 16,
    "upscore_pool4": 2,
    "upscore8": 8,
}
HEAD_LAYERS = SCORE_LAYERS + tuple(UPSAMPLE_FACTORS)  # What the FCN adds to the backbone.

CAFFE_CONV1_PAD = 100
# Crop offsets of the reference Caffe nets: (skip crops from coarse to fine, final crop).
CAFFE_CROPS = {
    "fcn32s": ((), 19),
    "fcn16s": ((5,), 27),
    "fcn8s": ((5, 9), 31),
}
# The "at-once" FCN-8s scales the pool features before scoring them.
AT_ONCE_SCALES = {"pool4": 0.01, "pool3": 0.0001}


def batch_norm_name(layer: str) -> str:
    """The BatchNorm that follows ``layer`` (``conv1_1_bn``: parameters and statistics)."""
    return f"{layer}_bn"


_he_init = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
# Fans of an HWIO kernel: k*k*in and k*k*out, as MindSpore counts them (for its transposed
# convolutions the two swap, and their sum does not change).
_xavier = nn.initializers.xavier_uniform()


def bilinear_kernel(factor: int, channels: int) -> np.ndarray:
    """Kernel (2f, 2f, C, C) of the Caffe/FCN bilinear upsampling by ``factor``.

    Channel c maps only to channel c (surgery.interp in the reference code).
    Used with the scatter semantics of ``Upsample``.
    """
    size = 2 * factor
    center = factor - 0.5
    og = np.arange(size, dtype=np.float64)
    filt1d = 1 - np.abs(og - center) / factor
    filt = np.outer(filt1d, filt1d)
    kernel = np.zeros((size, size, channels, channels), np.float32)
    kernel[:, :, np.arange(channels), np.arange(channels)] = filt[:, :, None]
    return kernel


_DIMS = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x, kernel, padding: int):
    pads = ((padding, padding), (padding, padding))
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_DIMS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_im2col_grad(x, kernel, padding: int):
    return _xla_conv(x, kernel, padding)


def _conv_fwd(x, kernel, padding):
    return _xla_conv(x, kernel, padding), (x, kernel)


def _conv_bwd(padding, residuals, g):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, kernel, padding), x)
    (dx,) = input_vjp(g)
    kh, kw, cin, cout = kernel.shape
    _, ho, wo, _ = g.shape
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    patches = jnp.concatenate(
        [xp[:, i : i + ho, j : j + wo] for i in range(kh) for j in range(kw)], axis=-1
    )
    dk = jnp.matmul(
        patches.reshape(-1, kh * kw * cin).T,
        g.reshape(-1, cout),
        preferred_element_type=jnp.float32,
    )
    return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


_conv_im2col_grad.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x, kernel, padding: int):
    """Stride-1 NHWC convolution with symmetric zero padding.

    On CPU its kernel gradient is one im2col matmul: XLA's CPU backward-filter
    convolution runs at 5-40 GFLOP/s on VGG's shapes, the matmul near peak
    (3.5x faster fwd+bwd for conv1_2 at 422x422). Other backends use XLA's own.
    """
    if jax.default_backend() == "cpu":
        return _conv_im2col_grad(x, kernel, padding)
    return _xla_conv(x, kernel, padding)


class Conv(nn.Module):
    """A k x k convolution (parameters ``kernel`` (k, k, in, out) and, unless
    ``use_bias=False``, ``bias``)."""

    features: int
    kernel_size: int
    padding: int
    dtype: Any = jnp.float32
    kernel_init: Any = _he_init
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
        y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.padding)
        if not self.use_bias:
            return y
        return y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)


class Upsample(nn.Module):
    """Transposed convolution without bias: kernel 2f, stride f, no padding.

    Scatter semantics as in Caffe's Deconvolution and PyTorch's
    ConvTranspose2d: input cell i adds ``x[i] * kernel[k]`` to output ``i*f + k``.
    The kernel is stored (kH, kW, in, out); a PyTorch weight (in, out, kH, kW)
    converts by a transpose alone, without a spatial flip.

    Computed as f*f phase convolutions of 2x2 taps (output ``q*f + r`` sees
    ``x[q] * k[r] + x[q-1] * k[r+f]``) followed by depth-to-space: the same result
    as a dilated convolution, without multiplying the (f*f - 1) inserted zeros
    (64x fewer FLOPs for x8, 1024x for x32).
    """

    features: int
    factor: int
    dtype: Any = jnp.float32
    kernel_init: Any = None  # None: bilinear (the FCN's surgery.interp).

    @nn.compact
    def __call__(self, x):
        def bilinear(key, shape, dtype=jnp.float32):
            del key
            if shape[2] != shape[3]:  # No bilinear meaning between different channel counts.
                raise ValueError(f"bilinear init needs in == out channels, got {shape}")
            return jnp.asarray(bilinear_kernel(self.factor, shape[2]), dtype)

        f, cin = self.factor, x.shape[-1]
        init = self.kernel_init or bilinear
        kernel = self.param("kernel", init, (2 * f, 2 * f, cin, self.features))
        # taps[t, u, cin, ry, rx, cout] = kernel[ry + f*(1-t), rx + f*(1-u), cin, cout]
        k = kernel.reshape(2, f, 2, f, cin, self.features)[::-1, :, ::-1]
        taps = k.transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, cin, f * f * self.features)
        x = jnp.pad(x.astype(self.dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
        y = jax.lax.conv_general_dilated(
            x,
            taps.astype(self.dtype),
            (1, 1),
            "VALID",
            dimension_numbers=_DIMS,
        )
        n, h, w, _ = y.shape  # h = input height + 1: output rows q*f + r, q in 0..h-1.
        y = y.reshape(n, h, w, f, f, self.features).transpose(0, 1, 3, 2, 4, 5)
        return y.reshape(n, h * f, w * f, self.features)


class FC6(nn.Module):
    """VGG's first fully connected layer as a 7x7 convolution.

    ``impl="matmul"`` gathers the 49 shifted views and multiplies once by the
    (49*C, F) kernel, which XLA on CPU runs about 1.7x faster than the 7x7
    convolution; ``impl="conv"`` is the plain convolution. Both compute the same.
    """

    features: int
    padding: int
    impl: str = "matmul"
    dtype: Any = jnp.float32
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        kernel = self.param("kernel", _he_init, (7, 7, c, self.features))
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        p = self.padding
        if self.impl == "conv":
            y = conv2d(x, kernel, p)
        else:
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
            h, w = x.shape[1] - 6, x.shape[2] - 6
            patches = jnp.concatenate(
                [x[:, i : i + h, j : j + w, :] for i in range(7) for j in range(7)], axis=-1
            )
            y = patches @ kernel.reshape(49 * c, self.features)
        if not self.use_bias:
            return y
        return y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)


def _crop(x, offset: int, like_h: int, like_w: int):
    """``x[:, offset : offset + like_h, offset : offset + like_w]``, exactly like_h x like_w.

    A dynamic slice of constant start (XLA folds it into a static slice) rather than
    indexing, which clamps, or ``lax.slice``, which checks bounds: under symbolic sizes
    (exported programs, fcn_jax.export) JAX can prove neither the clamped size equal to
    the input's nor the bound.
    """
    n, _, _, c = x.shape
    return jax.lax.dynamic_slice(x, (0, offset, offset, 0), (n, like_h, like_w, c))


class FCN(nn.Module):
    """FCN-32s/16s/8s: ``model.apply(variables, images, train=False)``.

    images: float[N, H, W, 3], already normalised; H, W >= 32.
    Returns logits float32[N, H, W, num_classes]. Dropout (after fc6 and fc7)
    is active when ``train=True`` and draws from the ``dropout`` rng stream.

    The ``vgg16_bn`` backbone puts a BatchNorm (``<layer>_bn``, its statistics in
    the ``batch_stats`` collection) after every VGG convolution, as torchvision's
    ``vgg16_bn``; ``fc_batch_norm`` also after fc6 and fc7, with no bias on the
    convolutions, fc6/fc7 and score layers: the network of the MindSpore FCN-8s
    tutorial. With ``train=True`` BatchNorm normalises by the statistics of the
    batch and updates the running ones (apply with ``mutable=["batch_stats"]``),
    unless ``freeze_batch_norm``. Under ``jax.jit`` with the batch split over
    devices, the batch statistics are means over the whole global batch: XLA
    reduces them across the devices, so 1 device and 8 compute the same.
    """

    variant: str = "fcn8s"
    num_classes: int = 21
    geometry: str = "caffe"
    at_once: bool = False
    base_width: int = 64  # VGG-16 uses 64; the demo uses a slimmer net.
    fc_width: int = 4096
    dropout_rate: float = 0.5
    fc6_impl: str = "matmul"
    dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.
    backbone: str = "vgg16"
    fc_batch_norm: bool = False
    freeze_batch_norm: bool = False  # Use the running statistics in training too.
    head_init: str = "fcn"  # One of HEAD_INITS.

    def __post_init__(self):
        for field, value, allowed in (
            ("variant", self.variant, VARIANTS),
            ("geometry", self.geometry, GEOMETRIES),
            ("fc6_impl", self.fc6_impl, FC6_IMPLS),
            ("backbone", self.backbone, BACKBONES),
            ("head_init", self.head_init, HEAD_INITS),
        ):
            if value not in allowed:
                raise ValueError(f"FCN {field}={value!r} is not one of {allowed}")
        if self.at_once and self.variant != "fcn8s":
            raise ValueError(f"at_once applies to fcn8s only, not to {self.variant!r}")
        if self.fc_batch_norm and self.backbone != "vgg16_bn":
            raise ValueError(f"fc_batch_norm needs the vgg16_bn backbone, not {self.backbone!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, images, *, train: bool):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"FCN expects images of shape [N, H, W, 3], got {images.shape}")
        n, height, width, _ = images.shape
        if height < MIN_INPUT_SIZE or width < MIN_INPUT_SIZE:  # Each decidable when symbolic.
            raise ValueError(
                f"input of {height}x{width} pixels is smaller than the FCN minimum of "
                f"{MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}; pad or upscale it"
            )
        caffe = self.geometry == "caffe"
        # The tutorial's network has no bias where a BatchNorm follows, nor in its scores.
        bias = not self.fc_batch_norm

        def conv(name, features, kernel_size, pad, kernel_init=_he_init):
            return Conv(features, kernel_size, pad, self.dtype, kernel_init, bias, name=name)

        def norm(x, layer):
            frozen = not train or self.freeze_batch_norm
            return BatchNorm(frozen, self.dtype, name=batch_norm_name(layer))(x)

        x = images.astype(self.dtype)
        pools = {}
        for stage, (names, multiplier) in enumerate(VGG16_STAGES, start=1):
            for name in names:
                pad = CAFFE_CONV1_PAD if caffe and name == "conv1_1" else 1
                x = conv(name, self.base_width * multiplier, 3, pad)(x)
                if self.backbone == "vgg16_bn":
                    x = norm(x, name)
                x = nn.relu(x)
            # Ceil-mode pooling (Caffe): a partial last window still yields a cell. One row
            # and column of -inf after the map give exactly that at every size (an even map
            # never reaches them), with padding that does not depend on the size: exported
            # programs of symbolic sizes (fcn_jax.export) keep a plain pooling op.
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding=((0, 1), (0, 1)))
            pools[f"pool{stage}"] = x

        fc6 = FC6(self.fc_width, 0 if caffe else 3, self.fc6_impl, self.dtype, bias, name="fc6")
        x = fc6(x)
        if self.fc_batch_norm:
            x = norm(x, "fc6")
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
        x = conv("fc7", self.fc_width, 1, 0)(x)
        if self.fc_batch_norm:
            x = norm(x, "fc7")
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
        score_init = _xavier if self.head_init == "xavier_uniform" else nn.initializers.zeros
        score = conv("score_fr", self.num_classes, 1, 0, score_init)(x)

        skips = {"fcn32s": (), "fcn16s": ("pool4",), "fcn8s": ("pool4", "pool3")}[self.variant]
        upsample_names = {
            "fcn32s": ("upscore",),
            "fcn16s": ("upscore2", "upscore16"),
            "fcn8s": ("upscore2", "upscore_pool4", "upscore8"),
        }[self.variant]
        skip_offsets, final_offset = CAFFE_CROPS[self.variant]
        for pool, up_name, skip_offset in zip(skips, upsample_names, skip_offsets):
            up = self._upsample(up_name, score)
            feat = pools[pool]
            if self.at_once:
                feat = feat * jnp.asarray(AT_ONCE_SCALES[pool], self.dtype)
            skip = conv(f"score_{pool}", self.num_classes, 1, 0, score_init)(feat)
            if caffe:  # The reference nets crop the skip to the upsampled map.
                skip = _crop(skip, skip_offset, up.shape[1], up.shape[2])
            else:  # Centre-aligned: drop half a coarse cell of the upsampled map.
                up = _crop(up, UPSAMPLE_FACTORS[up_name] // 2, skip.shape[1], skip.shape[2])
            score = up + skip
        up_name = upsample_names[-1]
        up = self._upsample(up_name, score)
        offset = final_offset if caffe else UPSAMPLE_FACTORS[up_name] // 2
        logits = _crop(up, offset, height, width)
        assert logits.shape == (n, height, width, self.num_classes), logits.shape
        return logits.astype(jnp.float32)

    def _upsample(self, name, x):
        init = _xavier if self.head_init == "xavier_uniform" else None
        return Upsample(self.num_classes, UPSAMPLE_FACTORS[name], self.dtype, init, name=name)(x)


def main_logits(outputs):
    """The segmentation logits of a model's outputs: the VGG FCNs return them, the ResNet
    FCNs (fcn_jax.resnet) a dict of heads whose main one is "out"."""
    return outputs["out"] if isinstance(outputs, Mapping) else outputs


def param_count(params) -> int:
    """Number of scalars in a parameter tree (works on abstract shapes too)."""
    return sum(math.prod(p.shape) for p in jax.tree.leaves(params))
