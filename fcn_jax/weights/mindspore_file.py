"""MindSpore ``.ckpt`` files, read without MindSpore.

A checkpoint is one protobuf message (MindSpore's ``checkpoint.proto``)::

    message Checkpoint {
      message Value { required string tag = 1;
                      oneof value { TensorProto tensor = 2; MapTensorProto maptensor = 3; } }
      repeated Value value = 1;
    }
    message TensorProto { repeated int64 dims = 1; required string tensor_type = 2;
                          required bytes tensor_content = 3; }

so a few lines of protobuf wire format read it: nobody should need that framework
installed to convert weights. Tensor bytes are little-endian.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

DTYPES = {
    "Float16": np.float16,
    "Float32": np.float32,
    "Float64": np.float64,
    "BFloat16": ml_dtypes.bfloat16,
    "Int8": np.int8,
    "Int16": np.int16,
    "Int32": np.int32,
    "Int64": np.int64,
    "UInt8": np.uint8,
    "Bool": np.bool_,
}
_VARINT, _LENGTH = 0, 2  # The wire types these messages use.


class FormatError(ValueError):
    """Bytes that are not a MindSpore checkpoint."""


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data):
            raise FormatError("truncated varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise FormatError("varint longer than 64 bits")


def _fields(data: bytes):
    """(field number, wire type, value) of a message: ints for varints, bytes otherwise."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, i = _varint(data, i)
        elif wire == _LENGTH:
            size, i = _varint(data, i)
            if i + size > len(data):
                raise FormatError(f"field {number} runs past the end of its message")
            value, i = data[i : i + size], i + size
        else:
            raise FormatError(f"field {number} has wire type {wire}, which checkpoints do not use")
        yield number, wire, value


def _tensor(data: bytes, tag: str) -> np.ndarray:
    dims, dtype, content = [], None, None
    for number, wire, value in _fields(data):
        if number == 1 and wire == _VARINT:
            dims.append(value)
        elif number == 1:  # Packed repeated dims.
            j = 0
            while j < len(value):
                dim, j = _varint(value, j)
                dims.append(dim)
        elif number == 2:
            dtype = value.decode()
        elif number == 3:
            content = value
    if dtype is None or content is None:
        raise FormatError(f"tensor {tag!r} lacks its type or its data")
    if dtype not in DTYPES:
        raise FormatError(f"tensor {tag!r} has type {dtype!r}, not one of {sorted(DTYPES)}")
    array = np.frombuffer(content, np.dtype(DTYPES[dtype]).newbyteorder("<"))
    if array.size != int(np.prod(dims, dtype=np.int64)):
        raise FormatError(f"tensor {tag!r} holds {array.size} values for shape {tuple(dims)}")
    return array.reshape(dims)


def parse(data: bytes) -> dict[str, np.ndarray]:
    """{tag: array} of every tensor in a checkpoint's bytes (map tensors are skipped)."""
    tensors = {}
    for number, wire, value in _fields(data):
        if number != 1 or wire != _LENGTH:
            raise FormatError(f"unexpected top-level field {number}")
        tag, tensor = None, None
        for field, _, item in _fields(value):
            if field == 1:
                tag = item.decode()
            elif field == 2:
                tensor = item
        if tag is None:
            raise FormatError("a value without a name")
        if tensor is not None:
            tensors[tag] = _tensor(tensor, tag)
    if not tensors:
        raise FormatError("no tensors")
    return tensors


def read(path) -> dict[str, np.ndarray]:
    """{name: array} of a MindSpore ``.ckpt`` file."""
    with open(path, "rb") as f:
        return parse(f.read())
