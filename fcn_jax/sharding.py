"""Device mesh and parameter sharding rules.

The mesh has two named axes, ("data", "model"). Batches are split over "data".
Parameters follow rules given as data: (regex on the "/"-joined parameter path,
PartitionSpec). The first matching rule wins; anything unmatched is replicated.
The optimizer state mirrors the parameter paths, so the same rules shard it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "model")

# fc6 (7x7x512x4096) and fc7 (4096x4096) hold ~120M of FCN's ~134M parameters.
RULE_SETS: dict[str, tuple[tuple[str, P], ...]] = {
    "replicated": (),
    # Tensor parallel (Megatron-style): fc6 split by output channel, fc7 by input
    # channel, so fc6's sharded activations feed fc7 without an all-gather.
    "model": (
        (r"(^|/)fc6/kernel$", P(None, None, None, "model")),
        (r"(^|/)fc6/bias$", P("model")),
        (r"(^|/)fc7/kernel$", P(None, None, "model", None)),
    ),
    # FSDP-style: fc6/fc7 stored split over the data-parallel devices and
    # gathered for use; cuts per-device memory with no extra mesh axis. ResNet FCNs:
    # the kernels of layer3, layer4 and the heads' 3x3 convolutions by output channel
    # (256 or more channels: 96% of fcn_resnet50's parameters, 97% of fcn_resnet101's).
    "fsdp": (
        (r"(^|/)fc6/kernel$", P(None, None, None, "data")),
        (r"(^|/)fc6/bias$", P("data")),
        (r"(^|/)fc7/kernel$", P(None, None, None, "data")),
        (r"(^|/)fc7/bias$", P("data")),
        (
            r"(^|/)(layer[34]_\d+_(conv\d|downsample)|(aux_)?classifier_conv)/kernel$",
            P(None, None, None, "data"),
        ),
    ),
}


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "model") mesh; one entry of ``shape`` may be -1 for "the rest"."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh.shape {tuple(shape)} needs one size per axis {MESH_AXES}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh.shape {tuple(shape)}: sizes must be positive, with at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(
                f"mesh.shape {tuple(shape)}: {len(devices)} devices do not divide by {known}"
            )
        shape[shape.index(-1)] = len(devices) // known
    size = math.prod(shape)
    if size > len(devices) or (size < len(devices) and jax.process_count() > 1):
        raise ValueError(
            f"mesh.shape {tuple(shape)} needs {size} devices, but {len(devices)} are visible"
            f"{' (all must be used on several hosts)' if size < len(devices) else ''}; "
            "use -1 for the data axis to take them all"
        )
    devices = devices[:size]  # One host may leave devices idle, e.g. to compare runs.
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def check_batch_sizes(mesh: Mesh, sizes: dict[str, int]) -> None:
    """Raises, naming the config field, for a global batch the "data" axis cannot split."""
    data = mesh.shape["data"]
    for field, size in sizes.items():
        if size % data:
            raise ValueError(
                f"config field {field}={size} does not divide over the {data} devices of the "
                f"mesh's data axis (mesh {dict(mesh.shape)}); use a multiple of {data}, or give "
                "the data axis fewer devices, e.g. --config.mesh.shape=(1,-1)"
            )


def path_str(path) -> str:
    """'params/fc6/kernel' for a jax tree path."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def get_rules(name: str):
    if name not in RULE_SETS:
        raise ValueError(f"mesh.param_sharding={name!r} is not one of {tuple(RULE_SETS)}")
    return RULE_SETS[name]


def tree_shardings(tree, mesh: Mesh, rules) -> object:
    """NamedShardings for every leaf of ``tree`` (arrays or ShapeDtypeStructs)."""

    def one(path, leaf):
        name = path_str(path)
        shape = np.shape(leaf)
        spec = P()
        for pattern, candidate in rules:
            if re.search(pattern, name):
                spec = candidate
                break
        if len(spec) > len(shape):
            raise ValueError(f"sharding rule {spec} has more axes than {name} of shape {shape}")
        for dim, axis in zip(shape, spec):
            if axis is not None and dim % mesh.shape[axis]:
                raise ValueError(
                    f"cannot shard {name} of shape {shape} with {spec}: size {dim} does not "
                    f"divide by the {mesh.shape[axis]} devices of mesh axis {axis!r}"
                )
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over "data", replicated over "model"."""
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assemble this process's share into global arrays split over "data"."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }


def put(tree, shardings):
    """``tree`` on ``shardings``: numpy leaves (the same on every process) are placed shard by
    shard, so a sharding that spans several hosts works; jax arrays are kept as they are."""

    def one(leaf, sharding):
        if isinstance(leaf, jax.Array):
            return leaf
        leaf = np.asarray(leaf)
        return jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf[index])

    return jax.tree.map(one, tree, shardings)
