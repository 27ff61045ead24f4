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


def column_letters(index: int) -> str:
    """0-based column index -> the letters a spreadsheet shows (0 -> A, 25 -> Z, 26 -> AA)."""
    out = ""
    n = index + 1
    while n:
        n, r = divmod(n - 1, 26)
        out = chr(65 + r) + out
    return out


@dataclass(frozen=True, slots=True)
class DuplicateHeader:
    """A header name found over several columns: ``columns`` are 0-based, leftmost (the one read) first."""

    name: str
    columns: tuple[int, ...]

    @property
    def letters(self) -> tuple[str, ...]:
        """The columns as the sheet labels them (B, F)."""
        return tuple(column_letters(c) for c in self.columns)


class GridData(SheetData):
    """:class:`SheetData` read from a header row, plus the header names that head more than one column.

    Only the first of such columns is read (see ``grid_to_data``); the
    mapping reports the rest (issue #9), so the names are kept here, found
    once per read. (A field of ``SheetData`` itself would do as well.)
    """

    __slots__ = ("duplicate_headers",)

    def __init__(self, source: str, headers: tuple[str, ...], columns: dict[str, list[object]],
                 row_numbers: list[int], version: str = "",
                 duplicate_headers: tuple[DuplicateHeader, ...] = ()) -> None:
        super().__init__(source, headers, columns, row_numbers, version)
        self.duplicate_headers = duplicate_headers


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

    def fingerprint(self) -> str | None:
        """A digest of the sheet's content as stored, or None when the source has none (Google).

        Files have one: an untouched file is then skipped by the next sync
        (issue #3), one hash instead of a read.
        """
        ...

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
