"""PyTorch ``.pth`` files read into numpy without PyTorch, and without running their code.

``torch.save`` pickles a state dict whose tensors are calls to
``torch._utils._rebuild_tensor*`` over storages that the pickle names by key and
stores beside it. Two containers hold that:

* zip (PyTorch 1.6 and later): ``<name>/data.pkl`` and each storage in
  ``<name>/data/<key>``, little-endian unless ``<name>/byteorder`` says otherwise;
* legacy (PyTorch 0.1.10 to 1.5, and ``_use_new_zipfile_serialization=False``): one
  stream of pickles (magic number, protocol version, system info, the object, the
  storage keys), then each storage as an int64 element count and its little-endian
  bytes. torchvision's and pytorch-fcn's files of 2017 are of this kind.

The unpickler resolves only the names such files use (OrderedDict, the storage
types, the tensor rebuild functions); any other (a pickled module, numpy, arbitrary
code) is refused before anything is called. Tensors come back as read-only numpy
views of their storage, bounds-checked.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import struct
import tarfile
import zipfile

import ml_dtypes
import numpy as np

from fcn_jax.weights.layouts import ConversionError

STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC, _LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001


class FormatError(ValueError):
    """Bytes that are not a PyTorch file of tensors."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclasses.dataclass
class _Storage:
    dtype: np.dtype
    numel: int
    # Read after the pickle, which names storages before their bytes; a _View for a slice.
    data: np.ndarray | _View | None = None


@dataclasses.dataclass(frozen=True)
class _View:
    """A slice of another storage (legacy files only): its data is the root's, from offset."""

    root: _Storage
    offset: int


@dataclasses.dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, offset, size, stride, *_):
    """torch._utils._rebuild_tensor(_v2): the later arguments (grad, hooks, metadata) are unused."""
    return _Tensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *_):
    return data


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(np.dtype(dtype)) for name, dtype in STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict):
        super().__init__(file, encoding="utf-8")  # As torch.load: Python 2 strings as UTF-8.
        self.storages = storages

    def find_class(self, module, name):
        try:
            return _GLOBALS[module, name]
        except KeyError:
            raise FormatError(
                f"it holds {module}.{name}, which is not part of a state dict of tensors"
            ) from None

    def persistent_load(self, pid):
        typename, storage_type, key, _location, numel, *view = pid
        if _text(typename) != "storage" or not isinstance(storage_type, _StorageType):
            raise FormatError(f"unknown persistent object {pid!r}")
        storage = self.storages.setdefault(_text(key), _Storage(storage_type.dtype, int(numel)))
        if view and view[0] is not None:  # A slice of a storage (legacy files only).
            _, offset, size = view[0]
            return _Storage(storage.dtype, int(size), _View(storage, int(offset)))
        return storage


def _text(value) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def load(path) -> object:
    """The object a ``torch.save`` file holds, its tensors as numpy arrays."""
    storages: dict[str, _Storage] = {}
    try:
        if zipfile.is_zipfile(path):
            obj = _load_zip(path, storages)
        elif tarfile.is_tarfile(path):
            raise FormatError(
                "it is in PyTorch's tar format of before 2017 (0.1.10); re-save it with "
                "torch.save(torch.load(path, weights_only=False), path)"
            )
        else:
            obj = _load_legacy(path, storages)
        return _arrays(obj)
    except (FormatError, OSError):
        raise
    except Exception as e:  # noqa: BLE001  Any other failure of a parser of foreign bytes.
        raise FormatError(f"{type(e).__name__}: {e}") from e


def _load_zip(path, storages) -> object:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise FormatError("a zip archive without one data.pkl (not a torch.save file)")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"  # Absent before PyTorch 1.10: little-endian.
        big = byteorder in names and archive.read(byteorder) == b"big"
        order = ">" if big else "<"
        obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
        for key, storage in storages.items():
            data = archive.read(f"{prefix}data/{key}")
            storage.data = _storage_array(data, storage, order, key)
    return obj


def _load_legacy(path, storages) -> object:
    with open(path, "rb") as f:
        header = [_Unpickler(f, storages).load() for _ in range(3)]
        if header[:2] != [_LEGACY_MAGIC, _LEGACY_PROTOCOL]:
            raise FormatError("no PyTorch magic number (not a torch.save file)")
        obj = _Unpickler(f, storages).load()
        keys = _Unpickler(f, storages).load()
        for key in map(_text, keys):
            if key not in storages:
                raise FormatError(f"storage {key} is stored but never used")
            storage = storages[key]
            (numel,) = struct.unpack("<q", _read(f, 8, key))
            if numel != storage.numel:
                raise FormatError(
                    f"storage {key} holds {numel} values, its tensors {storage.numel}"
                )
            data = _read(f, numel * storage.dtype.itemsize, key)
            storage.data = _storage_array(data, storage, "<", key)
    return obj


def _read(f, size: int, key: str) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise FormatError(f"the file ends inside storage {key} (a truncated download?)")
    return data


def _storage_array(data: bytes, storage: _Storage, order: str, key: str) -> np.ndarray:
    if len(data) != storage.numel * storage.dtype.itemsize:
        raise FormatError(f"storage {key} has {len(data)} bytes for {storage.numel} values")
    array = np.frombuffer(data, storage.dtype.newbyteorder(order))
    return array.astype(storage.dtype, copy=False)


def _arrays(obj):
    """``obj`` with every tensor replaced by its numpy array."""
    if isinstance(obj, _Tensor):
        return _array(obj)
    if isinstance(obj, dict):
        return type(obj)((k, _arrays(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_arrays(v) for v in obj)
    return obj


def _array(tensor: _Tensor) -> np.ndarray:
    storage = tensor.storage
    if isinstance(storage.data, _View):
        view = storage.data
        data = view.root.data[view.offset : view.offset + storage.numel]
    else:
        data = storage.data
    if data is None or len(data) != storage.numel:
        raise FormatError("a tensor's storage is missing")
    size, stride, offset = tensor.size, tensor.stride, tensor.offset
    if len(size) != len(stride) or min((*size, *stride, offset), default=0) < 0:
        raise FormatError(f"a tensor of size {size} and stride {stride}")
    if 0 in size:
        return np.zeros(size, data.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= len(data):
        raise FormatError(f"a tensor of size {size} runs past its storage of {len(data)} values")
    itemsize = data.dtype.itemsize
    strides = tuple(s * itemsize for s in stride)
    return np.lib.stride_tricks.as_strided(data[offset:], size, strides, writeable=False)


def read_state_dict(source) -> dict[str, np.ndarray]:
    """{key: float32 array} of a state dict (a ``.pth`` path, or such a dict already read):
    the ``model_state_dict`` of a training checkpoint, without a ``module.`` prefix."""
    if not isinstance(source, dict):
        try:
            source = load(source)
        except OSError as e:
            raise ConversionError(f"cannot read {source}: {e}") from e
        except FormatError as e:
            raise ConversionError(f"{source} is not a PyTorch state dict file: {e}") from e
    if isinstance(source, dict) and "model_state_dict" in source:
        source = source["model_state_dict"]
    if not isinstance(source, dict):
        raise ConversionError(f"expected a state dict, got {type(source).__name__}")
    return {k.removeprefix("module."): _float32(v) for k, v in source.items()}


def _float32(value) -> np.ndarray:
    if hasattr(value, "detach"):  # A torch tensor, without importing torch.
        value = value.detach().cpu().numpy()
    return np.asarray(value, np.float32)
