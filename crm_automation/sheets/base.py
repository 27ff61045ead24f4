"""The sheet-source seam: one adapter per format (csv, excel, google)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from crm_automation.models import SheetData


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a write-back did: cells changed, columns added, and whether it was postponed."""

    cells: int = 0
    added_columns: tuple[str, ...] = ()
    postponed: str | None = None  # why the write waits for the next cycle (sheet changed meanwhile)
    missing_keys: tuple[str, ...] = ()
    version: str = ""  # the sheet's version after this write ("" when unknown): the next write compares to it
    fingerprint: str = ""  # digest of the file as written (files only), so a re-sync can tell our write from theirs


class SheetSource(Protocol):
    """A customer sheet.

    ``read`` costs at most one request; ``write_back`` at most one batched
    write. Rows are found by key at write time because people sort and insert
    rows while the worker runs.
    """

    name: str
    #: True when every request counts against a quota (Google: 60 a minute per user). The worker
    #: then writes back right after the sync's read, reusing it (``reuse_read=True``): one read
    #: and at most one write per sync, whatever the number of rows.
    metered: bool

    def read(self) -> SheetData:
        """Read headers and all rows (raw cell values)."""
        ...

    def write_back(
        self, key_column: str, updates: dict[str, dict[str, str]], *, version: str, reuse_read: bool = False
    ) -> WriteResult:
        """Set ``updates[key][column] = value`` in the rows whose ``key_column`` equals key.

        Only the named columns change; a missing column is appended to the
        header; values are written as text, never as formulas. ``version`` is
        the token from the read: if the sheet changed since, the adapter may
        postpone (``WriteResult.postponed``) instead of overwriting an edit.
        Keys are compared after ``strip().lower()`` for email keys.
        ``reuse_read`` says the caller read the sheet a moment ago: a
        metered source then places the cells by that read instead of reading
        again; the others read again anyway (it costs no quota).
        """
        ...

    def append_rows(self, rows: list[dict[str, str]]) -> int:
        """Append rows (header name -> text) at the end; return how many were written."""
        ...
