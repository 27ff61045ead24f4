"""The grid logic every sheet adapter shares (CSV, Excel, Google), and that the core reads cells with.

Why its own module (issue #10): the core (field types, the sheet session,
the importer) compared cells and keys with helpers that lived in the CSV
adapter. Here: a cell's text and a key's normal form, the header rules
(:func:`grid_to_data`), the write-back and append plans placed by header
name, atomic file writes, and the CSV-injection guard.

Header rules (:func:`grid_to_data`): header names are stripped; a blank
header cell's column is ignored (it cannot be mapped by name); when two
columns carry the same header, the first (leftmost) one is used and the
later ones are ignored, the same "first wins" rule as duplicate keys, and
the name is kept in ``GridData.duplicate_headers`` so the mapping can
report it (issue #9). Fully empty rows are skipped, but row numbers stay
those of the sheet.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any, cast

from crm_automation.cells import cell_text
from crm_automation.errors import ServiceError
from crm_automation.sheets.base import DuplicateHeader, GridData

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# ------------------------------------------------------------------ shared grid logic


def norm_key(value: object) -> str:
    """Keys compare trimmed and case-insensitively (email keys are lower-cased by the mapping)."""
    return cell_text(value).lower()


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


_BLANK_CELL = re.compile(r"(?:\A|\x00)\s*(?:\x00|\Z)")


def _no_blank_text(values: Sequence[object]) -> bool:
    """True when no cell is blank text: checked in one regex pass over the column (C speed).

    Only for all-text columns; a NUL inside a cell can only make this say
    False, which costs the slow per-cell pass, never a wrong value.
    """
    return (bool(values) and {v.__class__ for v in values} == {str}
            and _BLANK_CELL.search("\x00".join(cast("Sequence[str]", values))) is None)


def grid_to_data(source: str, grid: Sequence[Sequence[object]], version: str) -> GridData:
    """Header row + data rows -> :class:`GridData` (see the module docstring for header rules).

    ``grid[0]`` is sheet row 1. Empty strings become None so every format
    reports an empty cell the same way. The grid is turned into columns in
    one transpose (C speed): 100,000 rows must convert in well under a
    second (issue #3).
    """
    if not grid:
        return GridData(source, (), {}, [], version)
    cols: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    twice: dict[str, list[int]] = {}  # header name -> every column it heads, when more than one
    for i, h in enumerate(grid[0]):
        name = cell_text(h)
        if not name:
            continue
        if name in seen:
            twice.setdefault(name, [seen[name]]).append(i)
        else:
            seen[name] = i
            cols.append((i, name))
    if not cols:
        return GridData(source, (), {}, [], version)
    duplicates = tuple(DuplicateHeader(name, tuple(where)) for name, where in twice.items())
    lines = grid[1:]
    transposed = list(zip_longest(*lines)) if lines else []  # short rows (CSV, Google) are padded with None
    n = len(lines)
    columns: dict[str, list[object]] = {}
    for i, name in cols:
        raw = transposed[i] if i < len(transposed) else (None,) * n
        columns[name] = list(raw) if _no_blank_text(raw) else [
            None if v.__class__ is str and not v.strip() else v for v in raw]
    numbers = list(range(2, n + 2))
    picked = list(columns.values())
    if n and any(None in c for c in picked):
        width = len(picked)
        keep = [t.count(None) != width for t in zip(*picked, strict=True)]
        if not all(keep):  # empty rows are skipped
            numbers = [r for r, k in zip(numbers, keep, strict=True) if k]
            columns = {name: [v for v, k in zip(c, keep, strict=True) if k] for name, c in columns.items()}
    return GridData(source, tuple(columns), columns, numbers, version, duplicates)


@dataclass(slots=True)
class CellPlan:
    """What a write-back must change: 0-based (grid row, column, text) cells."""

    cells: list[tuple[int, int, str]] = field(default_factory=list)
    added_columns: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    postponed: str | None = None


def plan_writeback(
    grid: Sequence[Sequence[object]],
    key_column: str,
    updates: dict[str, dict[str, str]],
    *,
    stored: Callable[[str], str] = lambda v: v,
) -> CellPlan:
    """Find each key's row in ``grid`` (read at write time) and the cells whose text differs.

    A missing write-back column is placed right of the widest row, so that it
    never lands on data in an unlabelled column. ``stored`` maps a value to
    the text the format keeps (CSV adds a quote before ``=``), so equal
    values are not rewritten. Duplicate keys: the first row wins, as in sync.
    """
    plan = CellPlan()
    header = [cell_text(h) for h in grid[0]] if grid else []
    want = key_column.strip()
    if want not in header:
        found = ", ".join(f'"{h}"' for h in header if h) or "none"
        plan.postponed = f'key column "{key_column}" not found in the header row (headers found: {found})'
        return plan
    kc = header.index(want)
    width = max((len(r) for r in grid), default=0)
    col_of: dict[str, int] = {}
    for name in dict.fromkeys(c for cols in updates.values() for c in cols):
        if name.strip() in header:
            col_of[name] = header.index(name.strip())
        else:
            col_of[name] = width
            plan.cells.append((0, width, name.strip()))
            plan.added_columns.append(name.strip())
            header.append(name.strip())
            width += 1
    row_of: dict[str, int] = {}
    for i in range(1, len(grid)):
        line = grid[i]
        if kc < len(line):
            k = norm_key(line[kc])
            if k and k not in row_of:
                row_of[k] = i
    for key, cols in updates.items():
        row = row_of.get(norm_key(key))
        if row is None:
            plan.missing_keys.append(key)
            continue
        line = grid[row]
        for name, value in cols.items():
            c = col_of[name]
            current = cell_text(line[c]) if c < len(line) and line[c] is not None else ""
            text = stored(value)
            if current != text.strip():
                plan.cells.append((row, c, text))
    return plan


def file_version(path: Path) -> str:
    """Return mtime and size, which change whenever someone saves the file."""
    st = path.stat()
    return f"{st.st_mtime_ns}:{st.st_size}"


def file_fingerprint(path: Path) -> str:
    """A digest of the file's bytes: equal fingerprints mean an unchanged sheet, so a re-sync may skip it.

    Cheap next to parsing (a 100,000-row .xlsx is about 4 MB: milliseconds),
    and unlike ``version`` it ignores saves that changed nothing.
    """
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "blake2b").hexdigest()[:32]
    except OSError as e:
        raise ServiceError(f"{path}: cannot read the sheet file: {e.strerror or e}") from None


def escape_formula(value: str) -> str:
    """``=cmd`` -> ``'=cmd``: keep a CSV value from being evaluated by Excel (CSV injection)."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def unescape_formula(value: str) -> str:
    """``'=cmd`` -> ``=cmd``: undo :func:`escape_formula` when reading."""
    if len(value) > 1 and value[0] == "'" and value[1] in _FORMULA_START:
        return value[1:]
    return value




# The grid's cells are each adapter's own type (str for CSV, calamine's values, the API's), all of which hold text.
def append_plan(grid: list[list[Any]], rows: Iterable[dict[str, str]], *,
                stored: Callable[[str], str] = lambda v: v) -> list[list[str]]:
    """Lay ``rows`` out by header name; unknown names are added to ``grid[0]`` (mutated) first.

    Trailing blank lines of ``grid`` are dropped so the new rows follow the last data row.
    """
    if not grid:
        grid.append([])
    while len(grid) > 1 and all(_blank(v) for v in grid[-1]):
        grid.pop()
    header = [cell_text(h) for h in grid[0]]
    for r in rows:
        for name in r:
            if name.strip() not in header:
                header.append(name.strip())
                grid[0].append(name.strip())
    index = {}
    for i, h in enumerate(header):
        if h and h not in index:
            index[h] = i
    out = []
    for r in rows:
        line = [""] * len(header)
        for name, value in r.items():
            line[index[name.strip()]] = stored(value)
        out.append(line)
    return out
