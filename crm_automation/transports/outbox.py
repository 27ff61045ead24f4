"""The ``outbox`` transport: each message becomes one ``.eml`` file, for trying things out.

Files are written to a temporary name and renamed, so a half-written file
never appears; the name is derived from the Message-ID, so handing the same
message over twice rewrites one file instead of adding a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable
from pathlib import Path

from crm_automation.config import Config
from crm_automation.errors import ServiceError

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class OutboxTransport:
    """Writes ``<outbox>/<message-id>.eml``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = f"outbox {folder}"

    @classmethod
    def from_config(cls, cfg: Config) -> OutboxTransport:
        """The folder named by ``[outbound] outbox``."""
        return cls(cfg.resolve(cfg.outbound.outbox))

    def open(self) -> None:
        """Create the folder."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ServiceError(f"{self.folder}: cannot create the outbox folder: {e.strerror}",
                               hint="check [outbound] outbox in config.toml, and that its parent is a writable "
                                    "folder with free space") from None

    def path_for(self, message_id: str) -> Path:
        """Where a message's file goes."""
        stem = _SAFE.sub("_", message_id.strip("<>"))[:120] or hashlib.sha256(message_id.encode()).hexdigest()
        return self.folder / f"{stem}.eml"

    def send(self, message: bytes, *, sender: str, recipients: list[str], message_id: str,
             meanwhile: Callable[[], None] | None = None, claim: Callable[[], bool] | None = None) -> bool:
        """Write the message atomically, after ``claim`` (nothing to wait for: ``meanwhile`` is not called)."""
        if claim is not None and not claim():
            return False
        dest = self.path_for(message_id)
        tmp = dest.with_suffix(".eml.tmp")
        try:
            with tmp.open("wb") as f:
                f.write(message)
            tmp.replace(dest)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()  # never leave a half-written file behind (a full disk)
            raise ServiceError(f"{dest}: cannot write to the outbox: {e.strerror}",
                               hint="free space on that disk or make the outbox folder writable; the message "
                                    "stays queued") from None
        return True

    def close(self) -> None:
        """Nothing to close."""

    def handed_over(self, message_ids: list[str]) -> set[str] | None:
        """The messages whose ``.eml`` is in place (written to a temporary name, then renamed)."""
        return {m for m in message_ids if self.path_for(m).exists()}
