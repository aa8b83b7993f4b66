"""Weights by name or file: downloaded once, checked, converted and cached.

The cache is ``$FCN_JAX_CACHE``, else ``$XDG_CACHE_HOME/fcn_jax`` (``~/.cache/fcn_jax``),
one folder per file keyed by its checksum::

    md5-de93e540ec79512f8770033849c8ae89/fcn8s_from_caffe.pth   the file, as published
    md5-de93e540ec79512f8770033849c8ae89/converted/             for --config.init_from

(``sha256-<digits>`` for torchvision's files and for files given by path,
``unpinned-<file>`` where the publisher gives no checksum). Every write goes to a
temporary name and is renamed into place once complete and checked, so an interrupted
or wrong download leaves nothing a later run would use. ``FCN_JAX_WEIGHTS_MIRROR`` (a
folder or a base URL) serves every file instead of its publisher. Processes sharing a
cache (the processes of one run on a shared home, or two runs) take a lock on the
file's folder: one downloads and converts, the others wait and then read its result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import http.client
import os
import pathlib
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from absl import logging
from tqdm import tqdm

from fcn_jax import files
from fcn_jax.weights import catalogue, convert, converted

CACHE_VARIABLE, MIRROR_VARIABLE = "FCN_JAX_CACHE", "FCN_JAX_WEIGHTS_MIRROR"
CONVERTED = "converted"
TIMEOUT_S = 60  # Per network operation.
_CHUNK = 1 << 20


class DownloadError(ValueError):
    """A weights file that could not be had: no network, a wrong checksum, a web page
    instead of the file. Nothing was cached."""


@dataclasses.dataclass(frozen=True)
class Checksum:
    algorithm: str  # md5 | sha256
    digest: str  # Hex; torchvision publishes the first 8 digits of the SHA-256 only.

    @classmethod
    def parse(cls, text: str) -> Checksum:
        algorithm, digest = text.split(":")
        return cls(algorithm, digest)

    def matches(self, digests: dict[str, str]) -> bool:
        return digests[self.algorithm].startswith(self.digest)

    def __str__(self) -> str:
        return f"{self.algorithm} {self.digest}"


def cache_dir() -> pathlib.Path:
    if os.environ.get(CACHE_VARIABLE):
        return pathlib.Path(os.environ[CACHE_VARIABLE]).expanduser()
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "fcn_jax"


def entry_dir(entry: catalogue.Weights) -> pathlib.Path:
    """The cache folder of a catalogue entry's file, named after its checksum."""
    if not entry.checksums:
        return cache_dir() / f"unpinned-{entry.file}"
    first = Checksum.parse(entry.checksums[0])
    return cache_dir() / f"{first.algorithm}-{first.digest}"


def weights_folder(name: str) -> tuple[str, str]:
    """(converted weights folder, what it is) of a catalogue name, fetched and converted on
    first use."""
    entry = catalogue.get(name)
    folder = entry_dir(entry) / CONVERTED
    _once(folder, lambda: _convert_entry(name, _fetch(name, entry, folder.parent), folder))
    return str(folder), f"{name}, {entry.what}"


def file_folder(path) -> tuple[str, str]:
    """(converted weights folder, what it is) of a weights file, converted on first use.

    A file whose checksum is in the catalogue is converted as its entry says (and shares
    its cache); any other gets the layout its suffix and keys show (``convert.detect``).
    """
    path = pathlib.Path(path).resolve()
    stat = path.stat()
    digests = _file_digests(path, stat.st_size, stat.st_mtime_ns)
    known = [
        name
        for name, entry in catalogue.CATALOGUE.items()
        if any(Checksum.parse(c).matches(digests) for c in entry.checksums)
    ]
    if known:
        entry = catalogue.get(known[0])
        folder = entry_dir(entry) / CONVERTED
        _once(folder, lambda: _convert_entry(known[0], path, folder))
        return str(folder), f"{path}, the catalogue's {known[0]}: {entry.what}"
    folder = cache_dir() / f"sha256-{digests['sha256']}" / CONVERTED
    _once(folder, lambda: _convert_file(path, folder))
    return str(folder), f"{path} ({converted.load_meta(str(folder))['normalization']} inputs)"


def _once(folder: pathlib.Path, make) -> None:
    """``make()`` fills ``folder`` unless it is there: one process at a time, the others
    waiting for it and then finding the folder made."""
    if not folder.is_dir():
        with _locked(folder.parent):
            if not folder.is_dir():
                make()


def _convert_file(path: pathlib.Path, folder: pathlib.Path) -> None:
    """Converts a weights file in the layout its suffix and keys show."""
    layout, source = convert.detect(path)
    _save(folder, *convert.convert(source, layout))


def _convert_entry(name: str, path: pathlib.Path, folder: pathlib.Path) -> None:
    """Converts a catalogue entry's file, checking it is what the catalogue says."""
    entry = catalogue.get(name)
    variables, fields = convert.convert(
        str(path),
        entry.layout,
        variant=entry.variant,
        num_classes=entry.num_classes,
        at_once=bool(entry.at_once),
    )
    found = converted.describe(variables["params"], **fields)
    expected = catalogue.meta(name)
    wrong = {k: found[k] for k, v in expected.items() if v is not None and found[k] != v}
    if wrong:
        raise convert.ConversionError(
            f"{path} is not {name} as the catalogue describes it: it has {wrong}, the catalogue "
            f"{ {k: expected[k] for k in wrong} }"
        )
    _save(folder, variables, fields)


def _save(folder: pathlib.Path, variables, fields) -> None:
    """Writes converted weights to ``folder`` atomically: a temporary folder, then a rename."""
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        converted.save_weights(str(tmp), variables, **fields)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logging.info("Converted weights cached in %s", folder)


def _fetch(name: str, entry: catalogue.Weights, directory: pathlib.Path) -> pathlib.Path:
    """The entry's file in the cache, checked: found there, or downloaded."""
    target = directory / entry.file
    checksums = [Checksum.parse(c) for c in entry.checksums]
    if target.is_file():  # Put there by hand (offline), or downloaded before a failed conversion.
        digests = _digests(target, {c.algorithm for c in checksums})
        if checksums and not any(c.matches(digests) for c in checksums):
            raise DownloadError(
                f"{target} has {_found(digests, checksums)}, not the catalogue's "
                f"{checksums[0]}: delete it (the next run downloads it again)"
            )
        return target
    mirror = os.environ.get(MIRROR_VARIABLE)
    urls = [_mirror_url(mirror, entry.file)] if mirror else list(entry.urls)
    failures = []
    for url in urls:
        try:
            _download(url, target, checksums)
            return target
        except DownloadError as e:
            failures.append(f"{url}: {e}")
    where = f"the mirror {MIRROR_VARIABLE}={mirror}" if mirror else "its publisher"
    raise DownloadError(
        f"cannot download {name} from {where} ({'; '.join(failures)}). Put {entry.file} at "
        f"{target}, or set {MIRROR_VARIABLE} to a folder or base URL that holds it"
    )


def _download(url: str, target: pathlib.Path, checksums: list[Checksum]) -> None:
    """Downloads ``url`` to ``target`` with a progress bar; ``target`` appears only once the
    whole file is there and matches one of ``checksums``."""
    request = urllib.request.Request(url, headers={"User-Agent": "fcn_jax"})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            if response.headers.get_content_type() == "text/html":
                raise DownloadError(
                    "the server sent a web page, not the file (Google Drive does this past its "
                    "download quota, or for a file that moved)"
                )
            size = int(response.headers.get("Content-Length") or 0) or None
            logging.info("Downloading %s (%s bytes) to %s", url, size or "unknown", target)
            hashes = {a: hashlib.new(a) for a in {c.algorithm for c in checksums} or {"sha256"}}
            received = 0
            bar = tqdm(  # Shown where stderr is a terminal; logs get the lines around it.
                total=size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=target.name,
                disable=None,
            )
            with files.atomic_file(target) as out, bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                if size is not None and received != size:
                    raise DownloadError(f"the connection closed after {received} of {size} bytes")
                digests = {a: h.hexdigest() for a, h in hashes.items()}
                if checksums and not any(c.matches(digests) for c in checksums):
                    raise DownloadError(
                        f"the file has {_found(digests, checksums)}, not the catalogue's "
                        f"{checksums[0]} (a changed or damaged file)"
                    )
    except (OSError, http.client.HTTPException) as e:
        raise DownloadError(_reason(e)) from e
    if not checksums:
        logging.warning(
            "%s has no published checksum: used as downloaded (SHA-256 %s)", url, digests["sha256"]
        )
    logging.info("Downloaded %s in %.0f s", target, time.monotonic() - start)


def _reason(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return f"{type(error).__name__}: {error}"


def _found(digests: dict[str, str], checksums: list[Checksum]) -> str:
    algorithm = checksums[0].algorithm
    return f"{algorithm} {digests[algorithm]}"


@functools.lru_cache(maxsize=16)
def _file_digests(path: pathlib.Path, size: int, mtime_ns: int) -> dict[str, str]:
    """MD5 and SHA-256 of a file given by path, once per process while it is unchanged."""
    return _digests(path, ("md5", "sha256"))


def _digests(path: pathlib.Path, algorithms) -> dict[str, str]:
    hashes = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashes.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashes.items()}


def _mirror_url(mirror: str, file: str) -> str:
    if "://" in mirror:
        return f"{mirror.rstrip('/')}/{urllib.parse.quote(file)}"
    return (pathlib.Path(mirror).expanduser().resolve() / file).as_uri()


@contextlib.contextmanager
def _locked(directory: pathlib.Path):
    """Holds ``directory``'s lock (one process at a time downloads and converts into it),
    after clearing what an interrupted holder left (temporary files and folders)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.info("Waiting for another process to fetch and convert into %s", directory)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for leftover in directory.glob(".*.tmp"):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
