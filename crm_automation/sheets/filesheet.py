"""What the file-backed sheets (CSV, Excel) share: opening errors, the write-back steps, the atomic save.

Why one base (issue #18, item 6): both adapters read a file on a shared drive
that people keep open and save while the worker runs, and they used to
repeat the same answers to it, each a little differently worded:

* a missing or unreadable file is a :class:`ServiceError` naming the path
  (the drive may be unmounted; the next pass retries);
* write-back reads the file again, and waits for the next cycle when it
  changed since the sync read it (``version``: mtime and size);
* the new file is written to a temporary name in the same folder and moved
  over the original (``os.replace``: atomic), after one last look that nobody
  saved meanwhile, so their edit is never overwritten;
* the written file's version and digest are kept, so the next sync can tell
  our own write from someone else's (:attr:`WriteResult.fingerprint`).

A format supplies how it reads (:meth:`FileSheet._load`), how text is stored
(:meth:`FileSheet._stored`) and how the changed cells are saved
(:meth:`FileSheet._write_cells`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from crm_automation.errors import ServiceError
from crm_automation.files import atomic_write
from crm_automation.sheets.base import WriteResult
from crm_automation.sheets.grid import file_fingerprint, file_version, plan_writeback

#: A cell as the format reads it: text for CSV, calamine's values (text, numbers, dates) for Excel.
C = TypeVar("C")
#: What a format must know to save the file as it found it: CSV's encoding, delimiter and line ending,
#: the Excel worksheet's title.
L = TypeVar("L")


@dataclass(slots=True)
class Loaded(Generic[C, L]):
    """The file as it is now: its cells (rows of raw values), its version, and its format's layout."""

    grid: list[list[C]]
    version: str
    layout: L


class _Postponed(Exception):  # noqa: N818 - internal signal, never escapes this module
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FileSheet(Generic[C, L]):
    """Base of :class:`~crm_automation.sheets.csv.CsvSource` and :class:`~crm_automation.sheets.excel.ExcelSource`."""

    metered = False  # a file on a shared drive: reading it again costs no quota
    #: Whether a PermissionError at the rename postpones the write (Windows shares refuse to replace a
    #: workbook Excel holds open) instead of failing the stage.
    locked_postpones: ClassVar[bool] = False

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self._written = ""  # version of the file as we last wrote it
        self._written_fp = ""  # and its digest

    # -- reading

    @contextmanager
    def _opening(self) -> Iterator[None]:
        """A file that is not there or cannot be read: a ServiceError naming it (the drive may be unmounted)."""
        try:
            yield
        except FileNotFoundError:
            raise ServiceError(f"{self.path}: sheet file not found",
                               hint="check [sheet] path, and that the shared drive is mounted") from None
        except OSError as e:
            raise ServiceError(f"{self.path}: cannot read the sheet file: {e.strerror or e}") from None

    def _load(self) -> Loaded[C, L]:
        """The file as it is now (a format's own read)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A digest of the file's bytes: equal means nothing changed, so a re-sync may skip the read."""
        return file_fingerprint(self.path)

    # -- writing

    def _stored(self, value: str) -> str:
        """The text the format keeps for ``value`` (CSV quotes a leading ``=``); compared before writing."""
        return value

    def _write_cells(self, loaded: Loaded[C, L], cells: list[tuple[int, int, str]]) -> str | None:
        """Save ``cells`` (0-based row, column, text) into the file; a reason when the write must wait."""
        raise NotImplementedError

    def write_back(self, key_column: str, updates: dict[str, dict[str, str]], *, version: str,
                   reuse_read: bool = False) -> WriteResult:
        """Set the worker's columns in the rows found by key now; postpone if the file was saved since ``version``.

        If nothing differs the file is not rewritten at all (no new mtime, no
        write the team's sheet tool would notice).
        """
        loaded = self._load()
        if version and loaded.version != version:
            return WriteResult(postponed=f"{self.path} changed since it was read; write-back waits for the next cycle")
        plan = plan_writeback(loaded.grid, key_column, updates, stored=self._stored)
        if plan.postponed:
            return WriteResult(postponed=f"{self.path}: {plan.postponed}")
        if not plan.cells:
            return WriteResult(missing_keys=tuple(plan.missing_keys), version=loaded.version)
        why = self._write_cells(loaded, plan.cells)
        if why:
            return WriteResult(postponed=why, missing_keys=tuple(plan.missing_keys))
        return WriteResult(cells=len(plan.cells) - len(plan.added_columns), added_columns=tuple(plan.added_columns),
                           missing_keys=tuple(plan.missing_keys), version=self._written, fingerprint=self._written_fp)

    def _replace(self, save: Callable[[Path], object], recheck: Callable[[], str | None]) -> str | None:
        """Save through ``save(tmp)`` and move it over the file; a reason, and the file untouched, if postponed.

        ``recheck`` runs after the save, just before the rename: someone may
        have saved while ours was being prepared (a reason then, and their
        edit stays). The rename keeps mtime and size, so the temporary file's
        version is the file's version after the write.
        """
        def write(tmp: Path) -> None:
            save(tmp)
            self._written = file_version(tmp)
            self._written_fp = file_fingerprint(tmp)
            busy = recheck()
            if busy:
                raise _Postponed(busy)

        try:
            atomic_write(self.path, write)
        except _Postponed as p:
            return p.reason
        except PermissionError as e:
            if not self.locked_postpones:
                raise self._cannot_write(e) from None
            return f"{self.path} cannot be replaced now ({e.strerror}); write-back waits for the next cycle"
        except OSError as e:
            raise self._cannot_write(e) from None
        return None

    def _cannot_write(self, e: OSError) -> ServiceError:
        """The save failed (a read-only share, a full disk): the stage fails and the next pass retries."""
        return ServiceError(f"{self.path}: cannot write the sheet file: {e.strerror or e}")

