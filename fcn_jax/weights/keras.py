"""Keras' ImageNet VGG-16 (``vgg16_weights_tf_dim_ordering_tf_kernels.h5``).

Layers ``block<s>_conv<i>``, ``fc1``, ``fc2``, kernels already (kH, kW, in, out), fc1
flattened from (7, 7, C). Keras' VGG-16 is Caffe's, so it expects the ``caffe``
normalisation. Reading it needs h5py.
"""

from __future__ import annotations

import numpy as np

from fcn_jax.weights.layouts import CONVS, ConversionError, fc6_from_flat

KERAS_CONVS = tuple(
    f"block{s}_conv{i}"
    for s, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
    for i in range(1, n + 1)
)


def backbone(path) -> dict:
    """Variables of conv1_1 ... fc7 from a Keras VGG16 weights file (or whole-model file)."""
    try:
        import h5py
    except ImportError as e:
        raise ConversionError(f"reading {path} needs h5py: pip install h5py") from e
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ConversionError(f"{path} is not an HDF5 (.h5) Keras weights file: {e}") from e
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        names = (*KERAS_CONVS, "fc1", "fc2")
        missing = [n for n in names if n not in root]
        if missing:
            raise ConversionError(f"{path}: missing Keras VGG16 layers {missing}")

        def weights(name):
            group = root[name]
            keys = [
                k.decode() if isinstance(k, bytes) else k
                for k in group.attrs.get("weight_names", [])
            ]
            if not keys:  # No index: kernel before bias by name.
                keys = sorted(group.keys(), key=lambda k: ("bias" in k, k))
            arrays = [np.asarray(group[k], np.float32) for k in keys]
            return arrays[0], arrays[1]

        params = {}
        for ours, theirs in zip(CONVS, KERAS_CONVS):
            kernel, bias = weights(theirs)
            params[ours] = {"kernel": kernel, "bias": bias}
        kernel, bias = weights("fc1")
        params["fc6"] = {"kernel": fc6_from_flat(kernel, "hwc"), "bias": bias}
        kernel, bias = weights("fc2")
        params["fc7"] = {"kernel": kernel[None, None], "bias": bias}
    return {"params": params, "batch_stats": {}}
