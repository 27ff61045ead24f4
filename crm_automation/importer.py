"""``import FILE``: migrate customers from another tool's CSV/Excel export into the sheet (issue #3).

Most teams start by moving a list out of another tool. The export's columns
are renamed to the sheet's (``--map 'Email=邮箱'``, else by the mapping: a
column already named like the sheet's, or named like the field, e.g. ``email``),
every row is validated by the same mapping as ``sync``, and then:

- a key not in the sheet is **added** (appended at the end, as text);
- a key already in the sheet is **updated** only in the fields where the
  export has a value that differs from the sheet's; an empty export cell never
  blanks a sheet cell;
- a key repeated inside the export, or already in the sheet on a row that does
  not validate, is a **duplicate** (the first row wins, as in ``sync``);
- a row that fails validation is **rejected** with row number, column, value
  and reason.

:func:`plan_import` is pure (good for ``--dry-run``); :func:`apply_import`
writes through the sheet source: one write-back for the updates (refused if
the sheet changed since it was read), then one append.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from crm_automation.errors import ConfigError, ServiceError
from crm_automation.mapping import Mapping
from crm_automation.models import FieldType, RowError, SheetData
from crm_automation.sheets.base import SheetSource
from crm_automation.sheets.grid import norm_key

if TYPE_CHECKING:
    from crm_automation.workspace import Workspace

_DUPLICATE = "duplicates the key"  # the start of mapping.py's reason for a repeated key


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One customer to write: ``values`` maps sheet column -> text; ``old`` the sheet's values before."""

    key: str
    row: int
    values: dict[str, str]
    old: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ImportPlan:
    """What an import would do; ``unchanged`` counts keys already in the sheet with nothing new."""

    add: list[ImportRow]
    update: list[ImportRow]
    rejected: list[RowError]
    duplicates: list[RowError]
    unchanged: int = 0
    key_column: str = ""
    version: str = ""


def parse_column_map(items: Iterable[str]) -> dict[str, str]:
    """``["Email=邮箱", "Name = 客户名称"]`` -> ``{"Email": "邮箱", "Name": "客户名称"}``."""
    out: dict[str, str] = {}
    for item in items:
        src, sep, dst = item.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise ConfigError(f"--map {item!r} is not EXPORT_COLUMN=SHEET_COLUMN (expected e.g. 'Email=邮箱')")
        out[src.strip()] = dst.strip()
    return out


def _column_map(mapping: Mapping, headers: tuple[str, ...], column_map: dict[str, str]) -> dict[str, str]:
    """Export header -> sheet column: explicit entries first, then by column name, then by field name."""
    out = {h: column_map[h] for h in headers if h in column_map}
    unknown = [k for k in column_map if k not in headers]
    if unknown:
        found = ", ".join(f'"{h}"' for h in headers) or "none"
        raise ConfigError(f"--map names export column(s) {', '.join(repr(u) for u in unknown)} that the file "
                          f"does not have; its headers are: {found}")
    taken = set(out.values())
    lower = {h.lower(): h for h in headers}
    for name, spec in mapping.fields.items():
        if spec.column in taken:
            continue
        if spec.column in headers and spec.column not in out:
            out[spec.column] = spec.column
        elif name.lower() in lower and lower[name.lower()] not in out:
            out[lower[name.lower()]] = spec.column
    return out


def _as_text(value: object, ftype: FieldType) -> str:
    if ftype is FieldType.BOOL:
        return "TRUE" if value else "FALSE"
    return str(value)


def plan_import(rows: SheetData, sheet: SheetData, mapping: Mapping, column_map: dict[str, str]) -> ImportPlan:
    """Work out what importing ``rows`` (the export, as read by CsvSource/ExcelSource) into ``sheet`` would do.

    Raises:
        ConfigError: a ``--map`` entry names a column the export lacks, or a
            required field has no column in the export (the message lists
            the export's headers).
    """
    cmap = _column_map(mapping, rows.headers, column_map)
    missing = [f'"{s.column}" (field {n})' for n, s in mapping.fields.items()
               if (s.required or n == mapping.key) and s.column not in cmap.values()]
    if missing:
        found = ", ".join(f'"{h}"' for h in rows.headers) or "none"
        raise ConfigError(f"{rows.source}: no column for {', '.join(missing)}; the file's headers are: {found}",
                          hint="name the export column with --map 'EXPORT_COLUMN=SHEET_COLUMN'")
    renamed = SheetData(rows.source, tuple(cmap.values()), {dst: rows.column(src) for src, dst in cmap.items()},
                        rows.row_numbers, rows.version)
    incoming = mapping.apply(renamed)
    rejected = [e for e in incoming.errors if not e.reason.startswith(_DUPLICATE)]
    duplicates = [e for e in incoming.errors if e.reason.startswith(_DUPLICATE)]

    key_col = mapping.fields[mapping.key].column
    existing = {c.key: c for c in mapping.apply(sheet).customers}
    raw_rows: dict[str, int] = {}
    for n, v in zip(sheet.row_numbers, sheet.column(key_col), strict=True):
        k = norm_key(v)
        if k and k not in raw_rows:
            raw_rows[k] = n
    add: list[ImportRow] = []
    update: list[ImportRow] = []
    unchanged = 0
    for cust in incoming.customers:
        old = existing.get(cust.key)
        if old is None:
            at = raw_rows.get(norm_key(cust.key))
            if at is not None:
                duplicates.append(RowError(rows.source, cust.row, key_col, cust.key,
                                           f"is already in the sheet at row {at}, which does not validate "
                                           f"(fix that row first; run `check`)"))
                continue
            values = {mapping.fields[n].column: _as_text(v, mapping.fields[n].type)
                      for n, v in cust.data.items() if v is not None}
            add.append(ImportRow(cust.key, cust.row, values))
            continue
        changed = {n: v for n, v in cust.data.items() if v is not None and v != old.data.get(n)}
        if not changed:
            unchanged += 1
            continue
        update.append(ImportRow(
            cust.key, cust.row,
            {mapping.fields[n].column: _as_text(v, mapping.fields[n].type) for n, v in changed.items()},
            {mapping.fields[n].column: old.data.get(n) for n in changed}))
    return ImportPlan(add=add, update=update, rejected=rejected, duplicates=duplicates, unchanged=unchanged,
                      key_column=key_col, version=sheet.version)


def apply_import(plan: ImportPlan, source: SheetSource) -> int:
    """Write the plan: updates by key (one write-back), then new rows (one append); return rows written.

    Raises:
        ServiceError: the sheet changed since it was read for the plan (run
            the import again: it is idempotent, rows already added are then
            found by key).
    """
    written = 0
    if plan.update:
        res = source.write_back(plan.key_column, {u.key: u.values for u in plan.update}, version=plan.version)
        if res.postponed:
            raise ServiceError(f"import not written: {res.postponed}", hint="run the import again")
        written += len(plan.update) - len(res.missing_keys)
    if plan.add:
        written += source.append_rows([a.values for a in plan.add])
    return written


def write_report(plan: ImportPlan, path: Path) -> int:
    """Write rejected and duplicate rows to a CSV (UTF-8 with BOM, so Excel opens it); return how many."""
    problems = [("rejected", e) for e in plan.rejected] + [("duplicate", e) for e in plan.duplicates]
    problems.sort(key=lambda p: p[1].row)
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "column", "value", "problem", "reason"])
        for kind, e in problems:
            w.writerow([e.row, e.column or "", "" if e.value is None else str(e.value), kind, e.reason])
    return len(problems)


def read_export(file: Path, worksheet: str | None = None) -> SheetData:
    """Read a CSV or Excel export, the adapter chosen by the file's suffix (``.xlsx``/``.xlsm``: Excel)."""
    if not file.is_file():
        raise ConfigError(f"{file}: file not found (expected a .csv or .xlsx export)")
    if file.suffix.lower() in {".xlsx", ".xlsm"}:
        from crm_automation.sheets.excel import ExcelSource

        return ExcelSource(file, worksheet=worksheet).read()
    from crm_automation.sheets.csv import CsvSource

    return CsvSource(file).read()


def import_file(ws: Workspace, file: Path, column_map: dict[str, str], *, worksheet: str | None = None,
                dry_run: bool = False) -> tuple[ImportPlan, int]:
    """``import``: plan the export against the sheet and, unless ``dry_run``, write it; (plan, rows written)."""
    export = read_export(file, worksheet)
    sheet = ws.open_sheet()
    plan = plan_import(export, sheet.read(), ws.mapping, column_map)
    return plan, (0 if dry_run else apply_import(plan, sheet))
