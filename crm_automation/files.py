"""Writing the files a command is asked to produce (``preview --out``), whole or not at all.

Why a module: a missing folder, a read-only disk or a full one used to end
``preview --out`` in a traceback with exit 1 (issue #9). Files are written
to a temporary name in the same folder and renamed, so a half-written file
never appears under the name the user gave.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from crm_automation.errors import StorageError


def write_output(path: Path, data: bytes, *, what: str) -> None:
    """Write ``data`` to ``path`` atomically; a clear CrmError (exit 2 or 3) naming the path if it cannot be."""
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tmp.replace(path)
    except OSError as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise StorageError.from_os(path, e, f"writing {what}") from None
