"""A local Maildir as the mailbox (tests, the sample workspace, or mail delivered by another tool).

Maildir has no UIDs. The "UID" here is the file's modification time in
nanoseconds, so the cursor (SPEC §8 ``mailbox_state``) advances as new mail
lands; files with the same time as the cursor are offered again and the
worker's Message-ID deduplication drops the ones already logged. Reading
never renames, flags or deletes a file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from crm_automation.config import Config
from crm_automation.errors import ServiceError
from crm_automation.mailbox.base import Cursor
from crm_automation.models import RawMessage

UIDVALIDITY = 1


class MaildirSource:
    """Reads ``<path>/new`` and ``<path>/cur`` (and ``<path>/.<Folder>`` for other folders)."""

    def __init__(self, path: Path, folders: list[str] | tuple[str, ...] = ("INBOX",),
                 max_bytes: int = 25 * 1024 * 1024) -> None:
        self.path = path
        self._folders = list(folders)
        self.max_bytes = max_bytes
        self.name = f"maildir {path}"

    @classmethod
    def from_config(cls, cfg: Config) -> MaildirSource:
        """The folder named by ``[mailbox] path``."""
        assert cfg.mailbox.path is not None  # noqa: S101 - config.py guarantees it
        return cls(cfg.resolve(cfg.mailbox.path), cfg.mailbox.folders, cfg.mailbox.max_message_bytes)

    def _dir(self, folder: str) -> Path:
        return self.path if folder.upper() == "INBOX" else self.path / f".{folder}"

    def folders(self) -> list[str]:
        """The configured folders."""
        return list(self._folders)

    def uidvalidity(self, folder: str) -> int:
        """Always 1: a Maildir's file times do not restart."""
        d = self._dir(folder)
        if not (d / "new").is_dir() and not (d / "cur").is_dir():
            raise ServiceError(f"{d}: not a Maildir (expected the folders new/ and cur/ inside it)")
        return UIDVALIDITY

    def fetch(self, folder: str, cursor: Cursor | None, *, batch: int = 500) -> Iterator[RawMessage]:
        """Messages whose file time is at or after the cursor, oldest first."""
        d = self._dir(folder)
        since = cursor.last_uid if cursor is not None else -1
        entries: list[tuple[int, str, Path]] = []
        for sub in ("new", "cur"):
            try:
                it = os.scandir(d / sub)
            except FileNotFoundError:
                continue
            with it:
                for e in it:
                    if e.name.startswith(".") or not e.is_file():
                        continue
                    mt = e.stat().st_mtime_ns
                    if mt >= since:
                        entries.append((mt, e.name, Path(e.path)))
        entries.sort()
        for mt, name, p in entries:
            try:
                with p.open("rb") as f:
                    raw = f.read(self.max_bytes + 1)
            except FileNotFoundError:  # moved by a mail client meanwhile; seen again under its new name
                continue
            yield RawMessage(folder=folder, uid=mt, uidvalidity=UIDVALIDITY, raw=raw, ref=name)

    def mark_processed(self, messages: list[RawMessage]) -> None:
        """Maildir messages stay where they are."""

    def close(self) -> None:
        """Nothing to release."""
