"""Writing files whole or not at all: the sheet adapters' saves and the files a command produces (``preview --out``).

Why a module: a missing folder, a read-only disk or a full one used to end
``preview --out`` in a traceback with exit 1 (issue #9). Files are written
to a temporary name in the same folder and renamed, so a half-written file
never appears under the name the user gave.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from crm_automation.errors import StorageError


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through ``write(tmp)`` to a temporary file next to ``path``, then ``os.replace`` it.

    Same folder so the rename is atomic on the same file system; the
    original's permission bits are kept.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with contextlib.suppress(OSError):
            tmp.chmod(path.stat().st_mode & 0o7777)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_output(path: Path, data: bytes, *, what: str) -> None:
    """Write ``data`` to ``path`` atomically; a clear CrmError (exit 2 or 3) naming the path if it cannot be."""
    try:
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
    except OSError as e:
        raise StorageError.from_os(path, e, f"writing {what}") from None
