"""Weights by name: download, checksum, conversion and cache (fcn_jax.weights.cache), served
by a real HTTP server in a thread.

The served file is tests/data/mindspore_fcn8s_tiny.ckpt, a checkpoint MindSpore itself
wrote of its tutorial's network at narrow widths, under a test name in the catalogue.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from fcn_jax import cli, convert, evaluation, init_from
from fcn_jax.weights import cache, catalogue
from tests.conftest import REPO
from tests.test_mindspore import CKPT

NAME = "test:tiny_fcn8s"
DATA = CKPT.read_bytes()
FILE = "mindspore_fcn8s_tiny.ckpt"


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; ``server.behaviour[file]`` drops the connection half-way, answers
    with a web page, or waits a second before sending."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.lstrip("/")
        self.server.requests.append(name)
        behaviour = self.server.behaviour.get(name)
        if behaviour == "slow":
            time.sleep(1.0)
        if behaviour == "page":
            body = b"<html>Google Drive can't scan this file for viruses</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif behaviour == "drop":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            self.wfile.write(DATA[: len(DATA) // 2])
            self.close_connection = True
        else:
            super().do_GET()


@pytest.fixture
def server(tmp_path):
    """A local HTTP server of a folder holding the fixture file; its ``requests`` are logged."""
    root = tmp_path / "served"
    root.mkdir()
    (root / FILE).write_bytes(DATA)
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    httpd.requests, httpd.behaviour = [], {}
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    """An empty cache of this test's own, no mirror."""
    monkeypatch.setenv(cache.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.delenv(cache.MIRROR_VARIABLE, raising=False)
    return tmp_path / "cache"


def add_entry(monkeypatch, url, md5=None) -> catalogue.Weights:
    """The fixture file in the catalogue under NAME, published at ``url``."""
    entry = catalogue.Weights(
        what="the MindSpore tutorial's FCN-8s at narrow widths",
        file=FILE,
        urls=(url,),
        checksums=(f"md5:{md5 or hashlib.md5(DATA).hexdigest()}",),
        layout="mindspore",
        normalization="mindspore",
        backbone="vgg16_bn",
        fc_batch_norm=True,
        variant="fcn8s",
        num_classes=3,
        geometry="same",
        at_once=False,
        found="tests/data",
    )
    monkeypatch.setitem(catalogue.CATALOGUE, NAME, entry)
    return entry


def cached_files(root):
    """What the cache holds, its lock files aside."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name != ".lock")


def assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_a_name_is_downloaded_checked_converted_and_cached(server, cache_root, monkeypatch):
    entry = add_entry(monkeypatch, server.url + FILE)
    # What the weights are is known without the file: the normalisation, the checks.
    assert init_from.load(NAME, variables=False)[1]["normalization"] == "mindspore"
    assert server.requests == []

    variables, meta = init_from.load(NAME)
    assert server.requests == [FILE]
    assert_same(variables, convert.from_mindspore_checkpoint(CKPT, num_classes=3)[1])
    assert {k: meta[k] for k in catalogue.meta(NAME)} == catalogue.meta(NAME)
    folder = cache.entry_dir(entry)
    assert folder.name == f"md5-{hashlib.md5(DATA).hexdigest()}"
    assert (folder / FILE).read_bytes() == DATA and (folder / cache.CONVERTED).is_dir()

    again, _ = init_from.load(NAME)  # The cache: no request, no conversion.
    assert server.requests == [FILE]
    assert_same(again, variables)


def test_eval_runs_a_whole_fcn_by_name(server, cache_root, monkeypatch, tiny_config, tmp_path):
    from tests.test_mindspore import tiny_mindspore_config

    add_entry(monkeypatch, server.url + FILE)
    config = tiny_mindspore_config(tiny_config, init_from=NAME)
    restored = evaluation.restore(config, str(tmp_path / "run"))
    assert (restored.source, restored.tag) == (f"weights {NAME}", "test_tiny_fcn8s")
    assert config.dataset.normalization == "mindspore"
    expected = convert.from_mindspore_checkpoint(CKPT, num_classes=3)[1]
    assert_same(jax.device_get(restored.variables), expected)


@pytest.mark.parametrize("failure", ["checksum", "drop", "page"])
def test_a_failed_download_caches_nothing(failure, server, cache_root, monkeypatch):
    add_entry(monkeypatch, server.url + FILE, md5="0" * 32 if failure == "checksum" else None)
    server.behaviour[FILE] = failure
    message = {
        "checksum": rf"md5 {hashlib.md5(DATA).hexdigest()}, not the catalogue's md5 0{{32}}",
        "drop": r"closed after|IncompleteRead",
        "page": r"sent a web page, not the file \(Google Drive",
    }[failure]
    with pytest.raises(cache.DownloadError, match=message):
        init_from.load(NAME)
    assert cached_files(cache_root) == [cache.entry_dir(catalogue.get(NAME)).name]
    if failure != "checksum":  # Nothing left behind stands in the way of the next try.
        server.behaviour.clear()
        assert init_from.load(NAME)[1]["variant"] == "fcn8s"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_one_line_names_the_url_the_cache_path_and_the_mirror(cache_root, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/{FILE}"
    entry = add_entry(monkeypatch, url)
    with pytest.raises(SystemExit) as e, cli.clear_errors():
        init_from.load(NAME)
    line = str(e.value.code)
    target = cache.entry_dir(entry) / FILE
    assert line.startswith(f"error: cannot download {NAME} from its publisher ({url}: ")
    assert f"Put {FILE} at {target}, or set FCN_JAX_WEIGHTS_MIRROR" in line
    assert "\n" not in line
    leftover = target.with_name(f".{FILE}.1a2b3c4d.tmp")  # What a kill -9 mid-download leaves.
    leftover.write_bytes(DATA[:100])
    shutil.copy(CKPT, target)  # What the line says to do, offline.
    assert init_from.load(NAME)[1]["num_classes"] == 3
    assert not leftover.exists()


def test_the_mirror_serves_every_file(server, tmp_path, monkeypatch):
    add_entry(monkeypatch, f"http://127.0.0.1:{closed_port()}/{FILE}")  # The publisher is gone.
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(CKPT, mirror / FILE)
    for i, where in enumerate((str(mirror), server.url)):  # A folder, a base URL.
        monkeypatch.setenv(cache.CACHE_VARIABLE, str(tmp_path / f"cache{i}"))
        monkeypatch.setenv(cache.MIRROR_VARIABLE, where)
        assert init_from.load(NAME)[1]["backbone"] == "vgg16_bn"
    assert server.requests == [FILE]
    monkeypatch.setenv(cache.CACHE_VARIABLE, str(tmp_path / "cache_empty"))
    monkeypatch.setenv(cache.MIRROR_VARIABLE, str(tmp_path))  # Without the file.
    with pytest.raises(
        cache.DownloadError, match=rf"from the mirror FCN_JAX_WEIGHTS_MIRROR={tmp_path} "
    ):
        init_from.load(NAME)


def test_an_unknown_name_lists_the_known_ones(tiny_config):
    from fcn_jax.config_lib import validate_config

    with pytest.raises(ValueError, match=r"init_from='pytorch-fcn:fcn4s' is not a name in the "):
        validate_config(tiny_config(init_from="pytorch-fcn:fcn4s"))  # Before anything runs.
    for variables in (True, False):
        with pytest.raises(
            ValueError, match=r"'torchvision:vgg17' is not a name in the weights "
        ) as e:
            init_from.load("torchvision:vgg17", variables=variables)
        assert all(name in str(e.value) for name in catalogue.CATALOGUE)


def test_a_file_is_converted_once_and_a_known_one_shares_its_names_cache(
    server, cache_root, tmp_path, monkeypatch
):
    mine = tmp_path / "mine.ckpt"
    shutil.copy(CKPT, mine)
    variables, meta = init_from.load(str(mine))  # Its layout from its suffix and keys.
    assert (meta["normalization"], meta["variant"]) == ("mindspore", "fcn8s")
    folder = cache_root / f"sha256-{hashlib.sha256(DATA).hexdigest()}"
    assert (folder / cache.CONVERTED).is_dir() and not (folder / "mine.ckpt").exists()

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    with monkeypatch.context() as m:
        m.setattr(cache.convert, "convert", no_conversion)
        assert_same(init_from.load(str(mine))[0], variables)
    entry = add_entry(monkeypatch, server.url + FILE)  # Now its checksum is in the catalogue.
    folder, what = init_from.local(str(mine))
    assert folder == str(cache.entry_dir(entry) / cache.CONVERTED) and NAME in what
    assert init_from.load(NAME)[1]["num_classes"] == 3
    assert server.requests == []  # The name found the conversion of the file.


def test_folders_converted_before_weights_were_npz_still_load(tmp_path):
    """Until the weights cache, converted folders held an orbax checkpoint per collection."""
    import orbax.checkpoint as ocp

    from fcn_jax import files

    _, variables = convert.from_mindspore_checkpoint(CKPT, num_classes=3)
    checkpointer = ocp.StandardCheckpointer()
    for collection in convert.COLLECTIONS:
        checkpointer.save(tmp_path / "w" / collection, variables[collection])
        checkpointer.wait_until_finished()
    files.write_json(tmp_path / "w" / "fcn_jax_weights.json", {"normalization": "mindspore"})
    loaded, meta = convert.load_weights(str(tmp_path / "w"))
    assert meta == {"normalization": "mindspore"}
    assert_same(loaded, variables)


def test_a_file_that_is_not_what_the_catalogue_says_is_refused(server, cache_root, monkeypatch):
    entry = add_entry(monkeypatch, server.url + FILE)
    monkeypatch.setitem(
        catalogue.CATALOGUE, NAME, catalogue.dataclasses.replace(entry, backbone="vgg16")
    )
    with pytest.raises(convert.ConversionError, match=r"is not test:tiny_fcn8s as the catalogue"):
        init_from.load(NAME)
    assert not (cache.entry_dir(entry) / cache.CONVERTED).exists()


def test_names_that_cannot_serve_the_config_are_refused_before_downloading(tiny_config, tmp_path):
    """The suite's empty mirror would turn any download into a DownloadError."""
    with pytest.raises(ValueError, match=r"'torchvision:vgg16' is torchvision's ImageNet VGG-16 "):
        evaluation.restore(tiny_config(init_from="torchvision:vgg16"), str(tmp_path / "run"))
    with pytest.raises(convert.ConversionError, match=r"model.backbone='resnet50'"):
        init_from.check_before_download(
            tiny_config(init_from="torchvision:resnet50"), whole_model=False
        )
    with pytest.raises(convert.ConversionError, match=r"model.geometry='caffe'"):
        init_from.check_before_download(
            tiny_config(init_from="pytorch-fcn:fcn8s"), whole_model=True
        )


_TWO_PROCESSES = f"""
import json, os, sys
from fcn_jax import cli
cli.initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))
import jax, numpy as np
from fcn_jax import init_from
from fcn_jax.weights import catalogue
fields = json.loads(os.environ["TEST_ENTRY"])
entry = {{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}}
catalogue.CATALOGUE["{NAME}"] = catalogue.Weights(**entry)
variables, meta = init_from.load("{NAME}")
total = sum(float(np.sum(x)) for x in jax.tree.leaves(variables))
print(json.dumps({{"folder": init_from.local("{NAME}")[0], "sum": total}}))
"""


def test_two_processes_of_a_run_download_and_convert_once(server, cache_root, monkeypatch):
    """Two jax.distributed processes on one shared cache: one fetches and converts (its
    orbax save is its own, not a collective), the other waits; both restore the result."""
    entry = add_entry(monkeypatch, server.url + FILE)
    server.behaviour[FILE] = "slow"
    fields = catalogue.dataclasses.asdict(entry)
    env = {
        **os.environ,
        "TEST_ENTRY": json.dumps(fields),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
    }
    address = f"127.0.0.1:{closed_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _TWO_PROCESSES, address, str(i)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert server.requests == [FILE]
    assert results[0] == results[1]
    assert results[0]["folder"] == str(cache.entry_dir(entry) / cache.CONVERTED)
