"""MindSpore ``.ckpt`` files written byte by byte, as MindSpore's ``save_checkpoint`` writes them.

A checkpoint is a protobuf ``Checkpoint`` message: repeated ``Value {tag = 1; tensor = 2}``
with ``TensorProto {dims = 1 (repeated int64); tensor_type = 2 ("Float32" ...); tensor_content
= 3 (little-endian bytes)}``; see fcn_jax/weights/mindspore_file.py.
"""

from __future__ import annotations

import numpy as np

TYPE_NAMES = {np.dtype(np.float32): "Float32", np.dtype(np.float16): "Float16"}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode(tensors: dict[str, np.ndarray]) -> bytes:
    out = b""
    for name, value in tensors.items():
        value = np.ascontiguousarray(value)
        tensor = b"".join(_varint(1 << 3) + _varint(d) for d in value.shape)  # dims, unpacked
        tensor += _field(2, TYPE_NAMES[value.dtype].encode())
        tensor += _field(3, value.astype(value.dtype.newbyteorder("<")).tobytes())
        out += _field(1, _field(1, name.encode()) + _field(2, tensor))
    return out


def write_checkpoint(path, tensors: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        f.write(encode(tensors))
