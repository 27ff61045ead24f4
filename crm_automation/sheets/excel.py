"""An ``.xlsx`` customer sheet on a shared drive.

Reading uses python-calamine (Rust): 100,000 rows in about 1.5 s where
openpyxl's read-only mode needs about 6 s (issue #3). Write-back uses openpyxl,
because it keeps formulas, formatting, data validation and the other sheets
of the workbook. openpyxl does not keep charts and images; a workbook with
those should use a CSV or Google sheet, or turn write-back off
(``[sheet] writeback = false``).

Write-back is careful because people keep the file open and save it while the
worker runs:

- ``version`` (mtime and size) is captured by :meth:`ExcelSource.read`. If the
  file changed since, or Excel's lock file ``~$<name>`` says someone has it
  open, the write is postponed to the next cycle instead of overwriting an
  edit (:attr:`WriteResult.postponed`).
- What to change is worked out from a fast calamine read; if nothing differs
  the file is not rewritten at all (no openpyxl load, no new mtime).
- Rows are found by key in the file as it is at write time; only the named
  cells change; missing columns are appended right of the used range.
- Values are stored as text cells (``data_type "s"``): ``=1+1``, ``+86…``,
  ``-x`` and ``@x`` stay text and are never evaluated (SPEC §11).
- The workbook is saved to a temporary file in the same folder and moved over
  the original with ``os.replace`` (atomic), after checking the version once more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import openpyxl  # noqa: TID251 - this is the Excel adapter
from python_calamine import CalamineError, CalamineWorkbook, WorksheetNotFound

from crm_automation.config import Config
from crm_automation.errors import ConfigError, ServiceError
from crm_automation.models import SheetData
from crm_automation.sheets.base import WriteResult
from crm_automation.sheets.csv import append_plan, atomic_write, file_version, grid_to_data, plan_writeback


class _Postponed(Exception):  # noqa: N818 - internal signal, never escapes this module
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ExcelSource:
    """An Excel workbook (``[sheet] source = "excel"``); ``worksheet`` defaults to the first sheet."""

    def __init__(self, path: Path, *, worksheet: str | None = None) -> None:
        self.path = Path(path)
        self.worksheet = worksheet
        self.name = self.path.name if not worksheet else f"{self.path.name} [{worksheet}]"

    @classmethod
    def from_config(cls, cfg: Config) -> Self:
        """Build from ``[sheet]``: ``path`` and optional ``worksheet``."""
        if not cfg.sheet.path:
            raise ConfigError(f"{cfg.path}: sheet.path is required when sheet.source = \"excel\"")
        return cls(cfg.resolve(cfg.sheet.path), worksheet=cfg.sheet.worksheet)

    # -- reading

    def _load(self) -> tuple[list[list[Any]], str, str]:
        """Grid, worksheet title and version of the file as it is now."""
        try:
            version = file_version(self.path)
            wb = CalamineWorkbook.from_path(str(self.path))
        except FileNotFoundError:
            raise ServiceError(f"{self.path}: sheet file not found",
                               hint="check [sheet] path, and that the shared drive is mounted") from None
        except OSError as e:
            raise ServiceError(f"{self.path}: cannot read the sheet file: {e.strerror or e}") from None
        except CalamineError as e:
            raise ServiceError(f"{self.path}: not a readable Excel workbook ({type(e).__name__}: {e})",
                               hint="open it in Excel and save it again as .xlsx") from None
        names = list(wb.sheet_names)
        title = self.worksheet or (names[0] if names else None)
        if title is None:
            raise ServiceError(f"{self.path}: the workbook has no worksheets")
        try:
            grid = wb.get_sheet_by_name(title).to_python(skip_empty_area=False)
        except WorksheetNotFound:
            found = ", ".join(f'"{n}"' for n in names)
            raise ConfigError(f"{self.path}: worksheet \"{title}\" not found; worksheets found: {found}",
                              hint="fix [sheet] worksheet (or remove it to use the first sheet)") from None
        except CalamineError as e:
            raise ServiceError(f"{self.path}: worksheet \"{title}\" is not readable ({e})") from None
        return grid, title, version

    def read(self) -> SheetData:
        """Read the worksheet with calamine; ``version`` is the file's mtime and size before the read."""
        grid, _, version = self._load()
        return grid_to_data(self.name, grid, version)

    # -- writing

    def _busy(self, version: str | None) -> str | None:
        """Why writing now would risk someone's edit, or None."""
        if version and file_version(self.path) != version:
            return f"{self.path} changed since it was read; write-back waits for the next cycle"
        lock = self.path.with_name("~$" + self.path.name)
        if lock.exists():
            return f"{self.path} is open in Excel ({lock.name} exists); write-back waits for the next cycle"
        return None

    def _apply(self, title: str, cells: list[tuple[int, int, str]], version: str | None) -> str | None:
        """Set ``cells`` (0-based) as text with openpyxl and replace the file; return a reason if postponed."""
        keep_vba = self.path.suffix.lower() == ".xlsm"
        try:
            wb = openpyxl.load_workbook(self.path, keep_vba=keep_vba, rich_text=True)
        except OSError as e:
            raise ServiceError(f"{self.path}: cannot open the workbook for writing: {e.strerror or e}") from None
        ws = wb[title]
        for i, c, text in cells:
            cell = ws.cell(row=i + 1, column=c + 1)
            cell.value = text
            cell.data_type = "s"  # text, never a formula, even for "=..." (SPEC §11)

        def write(tmp: Path) -> None:
            wb.save(tmp)
            # Someone may have saved while we loaded and saved: check once more just before the rename.
            busy = self._busy(version)
            if busy:
                raise _Postponed(busy)

        try:
            atomic_write(self.path, write)
        except _Postponed as p:
            return p.reason
        except PermissionError as e:
            return f"{self.path} cannot be replaced now ({e.strerror}); write-back waits for the next cycle"
        except OSError as e:
            raise ServiceError(f"{self.path}: cannot write the workbook: {e.strerror or e}") from None
        return None

    def write_back(self, key_column: str, updates: dict[str, dict[str, str]], *, version: str) -> WriteResult:
        """Set the worker's columns in the rows found by key now; see the module docstring."""
        grid, title, now = self._load()
        if version and now != version:
            return WriteResult(postponed=f"{self.path} changed since it was read; write-back waits for the next cycle")
        plan = plan_writeback(grid, key_column, updates)
        if plan.postponed:
            return WriteResult(postponed=f"{self.path}: {plan.postponed}")
        if not plan.cells:
            return WriteResult(missing_keys=tuple(plan.missing_keys))
        why = self._busy(now) or self._apply(title, plan.cells, now)
        if why:
            return WriteResult(postponed=why, missing_keys=tuple(plan.missing_keys))
        return WriteResult(cells=len(plan.cells) - len(plan.added_columns), added_columns=tuple(plan.added_columns),
                           missing_keys=tuple(plan.missing_keys))

    def append_rows(self, rows: list[dict[str, str]]) -> int:
        """Append rows below the last used row, as text cells; new header names are added."""
        if not rows:
            return 0
        grid, title, now = self._load()
        width = len(grid[0]) if grid else 0
        lines = append_plan(grid, rows)
        start = len(grid)  # 0-based index of the first new row (trailing blank rows were dropped)
        cells = [(0, c, grid[0][c]) for c in range(width, len(grid[0]))]
        for r, line in enumerate(lines):
            cells += [(start + r, c, v) for c, v in enumerate(line) if v != ""]
        why = self._busy(now) or self._apply(title, cells, now)
        if why:
            raise ServiceError(why.replace("write-back waits", "rows not added; retry"))
        return len(lines)
