""".pth files read without PyTorch (fcn_jax.weights.torch_file), against torch.load itself.

Every kind of file the weights catalogue names: zip (PyTorch 1.6 and later: torchvision's
ResNets and fcn_resnet50), legacy with ``_rebuild_tensor_v2`` (PyTorch 0.4 to 1.5), and
legacy with the 4-argument ``_rebuild_tensor`` of 2017 (torchvision's VGG-16, pytorch-fcn's
Caffe ports), which current PyTorch no longer writes, so the test writes it byte by byte.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the reference reader is torch.load")

from fcn_jax.weights import convert, torch_file  # noqa: E402
from fcn_jax.weights.layouts import ConversionError  # noqa: E402


def state_dict():
    """What a state dict holds: float32 kernels, a BatchNorm's int64 counter, float16, a
    non-contiguous tensor, two tensors sharing one storage, a scalar and an empty tensor."""
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(10, generator=g)
    return collections.OrderedDict(
        [
            ("features.0.weight", torch.randn(4, 3, 3, 3, generator=g)),
            ("features.0.bias", torch.randn(4, generator=g)),
            ("features.1.num_batches_tracked", torch.tensor(7)),
            ("half", torch.randn(2, 3, generator=g).half()),
            ("transposed", torch.randn(3, 5, generator=g).t()),
            ("first", shared[:4]),
            ("rest", shared[4:].view(2, 3)),
            ("empty", torch.zeros(0, 3)),
        ]
    )


class _Storage:
    def __init__(self, key, tensor):
        self.key, self.tensor = key, tensor


def save_2017(obj, path):
    """torch.save as PyTorch 0.1.10-0.3 wrote it (torchvision's vgg16-397923af.pth): the legacy
    stream, tensors as torch._utils._rebuild_tensor(storage, offset, size, stride)."""
    storages = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                kind = {torch.float32: torch.FloatStorage, torch.int64: torch.LongStorage}
                dtype = obj.tensor.dtype
                return ("storage", kind[dtype], obj.key, "cpu", obj.tensor.numel(), None)
            return None

        def reducer_override(self, obj):
            if isinstance(obj, torch.Tensor):
                key = str(len(storages))
                storages[key] = obj.contiguous()
                args = (_Storage(key, storages[key]), 0, tuple(obj.shape), storages[key].stride())
                return torch._utils._rebuild_tensor, args
            return NotImplemented

    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001}):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump(obj)
        pickle.dump(list(storages), f, protocol=2)
        for tensor in storages.values():
            f.write(struct.pack("<q", tensor.numel()) + tensor.numpy().tobytes())


def _save(kind, obj, path):
    if kind == "zip":
        torch.save(obj, path)
    elif kind == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        save_2017(obj, path)


@pytest.mark.parametrize("kind", ["zip", "legacy", "legacy_2017"])
def test_reads_what_torch_load_reads(kind, tmp_path):
    state = state_dict()
    if kind == "legacy_2017":  # Float32 and int64 tensors, unshared, as 2017's files hold.
        state = collections.OrderedDict(
            (k, v) for k, v in state.items() if v.dtype in (torch.float32, torch.int64)
        )
    checkpoint = {"epoch": 3, "arch": "FCN8s", "model_state_dict": state}  # pytorch-fcn's.
    _save(kind, checkpoint, tmp_path / "w.pth")
    assert zipfile.is_zipfile(tmp_path / "w.pth") == (kind == "zip")

    expected = torch.load(tmp_path / "w.pth", weights_only=True)
    got = torch_file.load(tmp_path / "w.pth")
    assert (got["epoch"], got["arch"]) == (3, "FCN8s")
    got, expected = got["model_state_dict"], expected["model_state_dict"]
    assert type(got) is collections.OrderedDict and list(got) == list(expected)
    for key, tensor in expected.items():
        assert got[key].dtype == tensor.numpy().dtype, key
        np.testing.assert_array_equal(got[key], tensor.numpy(), err_msg=key)
    # Reading the file through the converter takes the state dict out of the checkpoint.
    read = torch_file.read_state_dict(tmp_path / "w.pth")
    np.testing.assert_array_equal(read["features.0.weight"], state["features.0.weight"].numpy())


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_anything_but_tensors_is_refused_in_one_line_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "exploit.pth").write_bytes(pickle.dumps({"w": _Exploit(marker)}, protocol=2))
    torch.save({"model": _Exploit(marker)}, tmp_path / "exploit_zip.pth")
    torch.save(torch.nn.Linear(2, 3), tmp_path / "module.pth")  # A whole pickled module.
    for name, needle in (
        ("exploit.pth", "system"),
        ("exploit_zip.pth", "system"),
        ("module.pth", "torch.nn.modules.linear.Linear"),
    ):
        with pytest.raises(ConversionError) as e:
            torch_file.read_state_dict(tmp_path / name)
        message = str(e.value)
        assert f"{name} is not a PyTorch state dict file" in message and needle in message
        assert "\n" not in message
    assert not marker.exists()


def test_damaged_files_are_refused(tmp_path):
    torch.save(state_dict(), tmp_path / "zip.pth", _use_new_zipfile_serialization=False)
    data = (tmp_path / "zip.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) - 20])
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("notes.txt", "not weights")
    (tmp_path / "notes.txt").write_text("not weights\n")
    for name, needle in (
        ("cut.pth", "storage"),
        ("other.zip", "without one data.pkl"),
        ("notes.txt", "not a PyTorch state dict file"),
    ):
        with pytest.raises(ConversionError, match=needle):
            torch_file.read_state_dict(tmp_path / name)


def test_a_tensor_outside_its_storage_is_refused(tmp_path):
    """Strides are checked before a view is made: a crafted file cannot read other memory."""

    storage = _Storage("0", None)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is storage:
                return ("storage", torch.FloatStorage, "0", "cpu", 4, None)
            return None

    with open(tmp_path / "bad.pth", "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump({"w": _Rebuild((storage, 0, (4, 4), (4, 1)))})
        pickle.dump(["0"], f, protocol=2)
        f.write(struct.pack("<q", 4) + np.zeros(4, np.float32).tobytes())
    with pytest.raises(ConversionError, match=r"runs past its storage of 4 values"):
        torch_file.read_state_dict(tmp_path / "bad.pth")


def test_storage_slices_of_early_legacy_files(tmp_path):
    """PyTorch before 0.4 could store a tensor over a slice of another's storage."""
    root, view = _Storage("0", None), _Storage("1", None)
    ids = {id(root): ("0", 6, None), id(view): ("0", 6, ("1", 2, 3))}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if id(obj) in ids:
                key, numel, view_of = ids[id(obj)]
                return ("storage", torch.FloatStorage, key, "cpu", numel, view_of)
            return None

    with open(tmp_path / "views.pth", "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(header, f, protocol=2)
        state = {
            "whole": _Rebuild((root, 0, (2, 3), (3, 1))),
            "tail": _Rebuild((view, 1, (2,), (1,))),
        }
        Pickler(f, protocol=2).dump(state)
        pickle.dump(["0"], f, protocol=2)
        f.write(struct.pack("<q", 6) + np.arange(6, dtype=np.float32).tobytes())
    expected = torch.load(tmp_path / "views.pth", weights_only=True)
    got = torch_file.load(tmp_path / "views.pth")
    np.testing.assert_array_equal(got["tail"], [3, 4])
    for key in ("whole", "tail"):
        np.testing.assert_array_equal(got[key], expected[key].numpy())


class _Rebuild:
    def __init__(self, args):
        self.args = args

    def __reduce__(self):
        return torch._utils._rebuild_tensor, self.args


def test_layouts_are_detected_or_refused_naming_the_choices(tmp_path):
    """A file given to init_from without a known checksum: its keys say its layout, except
    where two layouts share them."""
    import torch_reference as ref

    net = ref.reference_net("fcn8s", base_width=4, fc_width=16)
    files = {
        "vgg16_bn.pth": ref.to_torchvision(
            ref.reference_net("fcn8s", batch_norm=True, base_width=4)
        ),
        "fcn16s.pth": ref.reference_net("fcn16s", base_width=4, fc_width=16).state_dict(),
        "caffe_names.pth": ref.backbone_state(net),
        "vgg16.pth": ref.to_torchvision(net),
        "fcn8s.pth": net.state_dict(),
    }
    for name, state in files.items():
        torch.save(state, tmp_path / name)
    assert convert.detect(tmp_path / "vgg16_bn.pth")[0] == "torchvision"
    assert convert.detect(tmp_path / "fcn16s.pth")[0] == "fcn"
    assert convert.detect(tmp_path / "caffe_names.pth")[0] == "caffe"
    assert convert.detect(tmp_path / "weights.ckpt")[0] == "mindspore"
    assert convert.detect(tmp_path / "weights.h5")[0] == "keras"
    with pytest.raises(ConversionError, match=r"--layout=torchvision` or `--layout=caffe`"):
        convert.detect(tmp_path / "vgg16.pth")
    with pytest.raises(ConversionError, match=r"--layout=fcn --variant=fcn8s` \(add --at_once"):
        convert.detect(tmp_path / "fcn8s.pth")
