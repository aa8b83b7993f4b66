"""Atomic file writes: a reader, or a crash, never sees half a file.

Reports, plots, masks and converted-weight metadata are written to a temporary
file beside the target and renamed over it once complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import uuid


@contextlib.contextmanager
def atomic_file(path):
    """A binary file object that replaces ``path`` only once fully written.

    On error the partial file is removed and ``path`` is left as it was. Creates
    the parent folder.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path, payload) -> None:
    with atomic_file(path) as f:
        f.write(json.dumps(payload, indent=1).encode())
