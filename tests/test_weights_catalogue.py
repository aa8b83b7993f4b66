"""The weights catalogue describes what each of its files converts to.

For every name, a narrow file of the same kind (the same layout, layer names and
container: legacy or zip .pth, Keras .h5, MindSpore .ckpt) is converted as the cache
converts the real one; what fcn_jax records for it must be what the catalogue says
before the download (normalisation, backbone, variant, head), which is what chooses the
input normalisation and refuses a config the weights do not fit.
"""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch", reason="the fixtures are PyTorch restatements")

import torch_reference as ref  # noqa: E402
from mindspore_fixtures import write_checkpoint  # noqa: E402

from fcn_jax.weights import cache, catalogue, convert, converted  # noqa: E402
from tests.test_torch_file import save_2017  # noqa: E402

B, F = 4, 16  # Narrow widths.


def vgg(**kwargs):
    return ref.reference_net("fcn8s", base_width=B, fc_width=F, **kwargs)


def pth(state, kind="2017"):
    """A saver of ``state`` as a .pth of the kind the real file is."""

    def save(path):
        if kind == "2017":  # PyTorch 0.1.10-0.3: torchvision's VGGs, pytorch-fcn's ports.
            save_2017(state, path)
        else:
            torch.save(state, path, _use_new_zipfile_serialization=kind == "zip")

    return save


def mindspore_ckpt(whole: bool):
    tensors = ref.to_mindspore(ref.mindspore_tutorial_net(21, base_width=B, fc_width=F))
    if not whole:  # The "partial" VGG-16 of the tutorial: convolutions and their BatchNorms.
        tensors = {k: v for k, v in tensors.items() if re.match(r"conv[1-5]\.", k)}
    return lambda path: write_checkpoint(path, tensors)


def keras_h5(path):
    ref.write_keras_h5(path, ref.keras_weights(vgg()))


def resnet(backbone, whole, kind):
    net = ref.fcn_resnet(backbone, base_width=4)
    return pth(net.state_dict() if whole else ref.imagenet_resnet_state(net), kind)


# name -> a maker of the saver of a file of that kind (nets are built when a test runs).
FIXTURES = {
    "torchvision:vgg16": lambda: pth(ref.to_torchvision(vgg())),
    "torchvision:vgg16_bn": lambda: pth(ref.to_torchvision(vgg(batch_norm=True))),
    "torchvision:resnet50": lambda: resnet("resnet50", whole=False, kind="zip"),
    "torchvision:resnet101": lambda: resnet("resnet101", whole=False, kind="zip"),
    "torchvision:fcn_resnet50_coco": lambda: resnet("resnet50", whole=True, kind="zip"),
    "torchvision:fcn_resnet101_coco": lambda: resnet("resnet101", whole=True, kind="legacy"),
    "pytorch-fcn:vgg16_from_caffe": lambda: pth(ref.to_torchvision(vgg())),
    "pytorch-fcn:fcn32s": lambda: pth(
        ref.reference_net("fcn32s", base_width=B, fc_width=F).state_dict()
    ),
    "pytorch-fcn:fcn16s": lambda: pth(
        ref.reference_net("fcn16s", base_width=B, fc_width=F).state_dict()
    ),
    "pytorch-fcn:fcn8s": lambda: pth(vgg().state_dict()),
    "pytorch-fcn:fcn8s_at_once": lambda: pth(vgg(at_once=True).state_dict()),
    "mindspore:vgg16_bn": lambda: mindspore_ckpt(whole=False),
    "mindspore:fcn8s": lambda: mindspore_ckpt(whole=True),
    "keras:vgg16": lambda: keras_h5,
}
# Local copies these files refuse naming the choices: their keys cannot tell the layout.
AMBIGUOUS = (
    "torchvision:vgg16",  # torchvision's, or Caffe's in torchvision's names
    "pytorch-fcn:vgg16_from_caffe",
    "pytorch-fcn:fcn8s",  # staged, or at once
    "pytorch-fcn:fcn8s_at_once",
)


def test_every_name_has_a_fixture_and_says_where_it_was_found():
    assert set(FIXTURES) == set(catalogue.CATALOGUE)
    digests = {"md5": "[0-9a-f]{32}", "sha256": "[0-9a-f]{8,64}"}
    for name, entry in catalogue.CATALOGUE.items():
        assert entry.file.endswith((".pth", ".ckpt", ".h5")) and entry.urls and entry.found, name
        for checksum in entry.checksums:
            algorithm, digest = checksum.split(":")
            assert re.fullmatch(digests[algorithm], digest), name
        if name.startswith("torchvision:"):  # The name carries what torch.hub checks.
            prefix = re.fullmatch(r"[\w-]+-([0-9a-f]{8})\.pth", entry.file).group(1)
            assert entry.checksums == (f"sha256:{prefix}",)
            assert entry.urls == (f"https://download.pytorch.org/models/{entry.file}",)


@pytest.mark.parametrize("name", sorted(catalogue.CATALOGUE))
def test_each_entry_is_what_a_file_of_its_kind_converts_to(name, tmp_path):
    entry = catalogue.get(name)
    path = tmp_path / entry.file
    FIXTURES[name]()(path)
    variables, fields = convert.convert(
        str(path),
        entry.layout,
        variant=entry.variant,
        num_classes=entry.num_classes,
        at_once=bool(entry.at_once),
    )
    recorded = converted.describe(variables["params"], **fields)
    assert {k: recorded[k] for k in catalogue.meta(name)} == catalogue.meta(name)
    assert recorded["normalization"] == convert.NORMALIZATION[entry.layout]
    # A local copy of the file (its checksum not the real one's) gets the same layout, or
    # is refused naming the choices where its keys cannot tell.
    if name in AMBIGUOUS:
        with pytest.raises(convert.ConversionError, match="python -m fcn_jax.convert --layout="):
            convert.detect(path)
    else:
        assert convert.detect(path)[0] == entry.layout


def test_the_cache_key_is_the_published_checksum():
    entry = catalogue.get("pytorch-fcn:fcn8s")
    assert cache.entry_dir(entry).name == "md5-de93e540ec79512f8770033849c8ae89"
    assert cache.entry_dir(catalogue.get("torchvision:vgg16")).name == "sha256-397923af"
    assert cache.entry_dir(catalogue.get("mindspore:fcn8s")).name == "unpinned-FCN8s.ckpt"
