"""An ``.xlsx`` customer sheet on a shared drive.

Reading uses python-calamine (Rust): 100,000 rows in about 1.5 s where
openpyxl's read-only mode needs about 6 s (issue #3).

Writing patches the worksheet's XML inside the .xlsx: only the target cells
are replaced (as inline-string cells, keeping their style), every other part
of the package (formulas, formatting, other sheets, charts, images, pivot
tables, macros) is copied byte for byte. Measured on a 100,000-row workbook:
openpyxl needed 44 s and 560 MB to load and save it for 2,000 cells; the
patch takes a few seconds. When the patch cannot be applied safely (a target
cell holds a formula, cells without ``r`` references, a prefixed XML
namespace) the workbook is written with openpyxl instead, which keeps
formulas, formatting and other sheets but drops charts and images.

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
- Values are stored as text cells (inline strings; ``data_type "s"`` with
  openpyxl): ``=1+1``, ``+86…``, ``-x`` and ``@x`` stay text and are never
  evaluated (SPEC §11).
- The workbook is saved to a temporary file in the same folder and moved over
  the original with ``os.replace`` (atomic), after checking the version once more.
- Excel's owner file (``~$name.xlsx``; for long names Excel drops the first
  one or two letters, ``~$stomers.xlsx``) means someone has the workbook open:
  the write waits rather than race their next save.
"""

from __future__ import annotations

import posixpath
import re
import xml.etree.ElementTree as ET
import zipfile
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Self
from xml.sax.saxutils import escape

from python_calamine import CalamineError, CalamineWorkbook, WorksheetNotFound

from crm_automation.config import Config
from crm_automation.errors import ConfigError, CrmError, ServiceError
from crm_automation.models import SheetData
from crm_automation.sheets.filesheet import FileSheet, Loaded
from crm_automation.sheets.grid import append_plan, file_version, grid_to_data

#: A cell as calamine reads it.
_Cell = int | float | str | bool | time | date | datetime | timedelta

_ZIP = b"PK\x03\x04"
_OLE2 = bytes.fromhex("d0cf11e0a1b11ae1")
_SNIFF = 65536


def _text_kind(head: bytes) -> str | None:
    """What a file that is not a workbook holds, judged on its first bytes: HTML, XML, CSV text, or None.

    Why (issue #17): exports from web systems are often an HTML table, or
    CSV text, saved with an .xls/.xlsx name; calamine then says only "invalid
    Zip archive", and the admin cannot tell that ``source = "csv"`` (or a
    save as .xlsx) is the way out.
    """
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = head.decode("utf-16", errors="ignore")
    elif b"\x00" in head:
        return None
    else:
        for enc in ("utf-8-sig", "gb18030"):
            try:
                text = head.decode(enc)
                break
            except UnicodeDecodeError as e:
                if e.start > len(head) - 4:  # a character cut by the sample's end
                    text = head[:e.start].decode(enc, errors="ignore")
                    break
        else:
            return None
    start = text.lstrip("\ufeff \t\r\n")[:4096].lower()
    if any(c < " " and c not in "\t\r\n" for c in start):  # control bytes: binary that happened to decode
        return None
    if start.startswith(("<html", "<!doctype html", "<table", "<meta")) or "<table" in start:
        return "html"
    if start.startswith("<?xml"):
        return "xml"
    return "text"


def _not_a_workbook(path: Path, e: CalamineError) -> CrmError:
    """The file calamine refused: say what it is instead, and which setting reads it (issue #17).

    CSV text is a ConfigError (``[sheet] source`` is the fix, exit 2); the
    rest may be a file still being copied, so it is retried at the next pass.
    """
    try:
        with path.open("rb") as f:
            head = f.read(_SNIFF)
    except OSError:
        head = _ZIP
    kind = None if head.startswith((_ZIP, _OLE2)) else ("empty" if not head else _text_kind(head))
    if kind == "text":
        return ConfigError(f"{path}: the file is text (CSV), not an Excel workbook ([sheet] source = \"excel\")",
                           hint="set [sheet] source = \"csv\" in config.toml to read it as CSV, or open it in "
                                "Excel and save it as .xlsx")
    if kind == "html":
        return ServiceError(f"{path}: the file is a web page (an HTML table saved with a spreadsheet's name), not "
                            f"an Excel workbook", hint="open it in Excel and save it as .xlsx (\"Excel Workbook\")")
    if kind == "xml":
        return ServiceError(f"{path}: the file is XML (e.g. \"XML Spreadsheet 2003\"), not an .xlsx workbook",
                            hint="open it in Excel and save it as .xlsx (\"Excel Workbook\")")
    if kind == "empty":
        return ServiceError(f"{path}: the file is empty (0 bytes; expected an Excel workbook)",
                            hint="the sheet may still be copying to the shared drive; otherwise restore it")
    return ServiceError(f"{path}: not a readable Excel workbook ({type(e).__name__}: {e})",
                        hint="open it in Excel and save it again as .xlsx")


class ExcelSource(FileSheet[_Cell, str]):
    """An Excel workbook (``[sheet] source = "excel"``); ``worksheet`` defaults to the first sheet.

    Opening errors, the write-back steps and the atomic save are the file
    sheets' (:class:`~crm_automation.sheets.filesheet.FileSheet`); the layout
    a save keeps is the worksheet's title.
    """

    locked_postpones = True  # Windows shares refuse to replace a workbook Excel holds open: wait, do not fail

    def __init__(self, path: Path, *, worksheet: str | None = None) -> None:
        super().__init__(path)
        self.worksheet = worksheet
        self.name = self.path.name if not worksheet else f"{self.path.name} [{worksheet}]"

    @classmethod
    def from_config(cls, cfg: Config) -> Self:
        """Build from ``[sheet]``: ``path`` and optional ``worksheet``."""
        if not cfg.sheet.path:
            raise ConfigError(f"{cfg.path}: sheet.path is required when sheet.source = \"excel\"")
        return cls(cfg.resolve(cfg.sheet.path), worksheet=cfg.sheet.worksheet)

    # -- reading

    def _load(self) -> Loaded[_Cell, str]:
        """Grid, version and worksheet title of the file as it is now."""
        with self._opening():
            version = file_version(self.path)
            try:
                wb = CalamineWorkbook.from_path(str(self.path))
            except CalamineError as e:
                raise _not_a_workbook(self.path, e) from None
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
        return Loaded(grid, version, title)

    def read(self) -> SheetData:
        """Read the worksheet with calamine; ``version`` is the file's mtime and size before the read."""
        loaded = self._load()
        return grid_to_data(self.name, loaded.grid, loaded.version)

    # -- writing

    def _busy(self, version: str | None) -> str | None:
        """Why writing now would risk someone's edit, or None."""
        if version and file_version(self.path) != version:
            return f"{self.path} changed since it was read; write-back waits for the next cycle"
        name = self.path.name
        for owner in dict.fromkeys(("~$" + name, "~$" + name[1:], "~$" + name[2:])):
            lock = self.path.with_name(owner)
            if lock.exists():
                return f"{self.path} is open in Excel ({lock.name} exists); write-back waits for the next cycle"
        return None

    def _cannot_write(self, e: OSError) -> ServiceError:
        return ServiceError(f"{self.path}: cannot write the workbook: {e.strerror or e}")

    def _write_cells(self, loaded: Loaded[_Cell, str], cells: list[tuple[int, int, str]]) -> str | None:
        return self._busy(loaded.version) or self._apply(loaded.layout, cells, loaded.version)

    def _apply(self, title: str, cells: list[tuple[int, int, str]], version: str | None) -> str | None:
        """Set ``cells`` (0-based) as text and replace the file; return a reason if postponed."""
        try:
            patched = _patch_workbook(self.path, title, cells)
        except (OSError, zipfile.BadZipFile, KeyError, ET.ParseError):
            patched = None
        if patched is not None:
            return self._replace(lambda tmp: tmp.write_bytes(patched), lambda: self._busy(version))
        return self._apply_openpyxl(title, cells, version)

    def _apply_openpyxl(self, title: str, cells: list[tuple[int, int, str]], version: str | None) -> str | None:
        """The fallback: load and save the whole workbook with openpyxl.

        openpyxl (with numpy, ~0.25 s) is imported here, not at start-up: reading never needs it.
        """
        import openpyxl  # noqa: TID251 - this is the Excel adapter
        from openpyxl.utils.exceptions import InvalidFileException  # noqa: TID251 - as above

        keep_vba = self.path.suffix.lower() == ".xlsm"
        try:
            wb = openpyxl.load_workbook(self.path, keep_vba=keep_vba, rich_text=True)
        except OSError as e:
            raise ServiceError(f"{self.path}: cannot open the workbook for writing: {e.strerror or e}") from None
        except (InvalidFileException, zipfile.BadZipFile, KeyError) as e:
            raise ServiceError(f"{self.path}: cannot write back into this file ({e}); write-back needs an .xlsx "
                               f"or .xlsm workbook",
                               hint="save it as .xlsx, or set [sheet] writeback = false") from None
        ws = wb[title]
        for i, c, text in cells:
            cell = ws.cell(row=i + 1, column=c + 1)
            cell.value = text
            cell.data_type = "s"  # text, never a formula, even for "=..." (SPEC §11)
        return self._replace(wb.save, lambda: self._busy(version))

    def append_rows(self, rows: list[dict[str, str]]) -> int:
        """Append rows below the last used row, as text cells; new header names are added."""
        if not rows:
            return 0
        loaded = self._load()
        grid = loaded.grid
        width = len(grid[0]) if grid else 0
        lines = append_plan(grid, rows)
        start = len(grid)  # 0-based index of the first new row (trailing blank rows were dropped)
        cells = [(0, c, str(grid[0][c])) for c in range(width, len(grid[0]))]
        for r, line in enumerate(lines):
            cells += [(start + r, c, v) for c, v in enumerate(line) if v != ""]
        why = self._write_cells(loaded, cells)
        if why:
            raise ServiceError(why.replace("write-back waits", "rows not added; retry"))
        return len(lines)


# ---------------------------------------------------------------- the XML patch

_NS_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_NS_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_NS_PKG = "http://schemas.openxmlformats.org/package/2006/relationships"
_ROW_OPEN = re.compile(rb"<row\b([^>]*?)(/?)>")
_R_ATTR = re.compile(rb'\sr="([A-Z]*)(\d+)"')
_CELL = re.compile(rb"<c\b([^>]*?)(?:/>|>(.*?)</c>)", re.DOTALL)
_STYLE = re.compile(rb'\ss="\d+"')
_SPANS = re.compile(rb'\sspans="[^"]*"')
_DIMENSION = re.compile(rb'<dimension ref="([A-Z]+)(\d+)(?::([A-Z]+)(\d+))?"')
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _col_letters(c: int) -> str:
    """0-based column index -> Excel letters (0 -> A, 26 -> AA)."""
    out = ""
    c += 1
    while c:
        c, rem = divmod(c - 1, 26)
        out = chr(65 + rem) + out
    return out


def _col_index(letters: bytes) -> int:
    n = 0
    for ch in letters:
        n = n * 26 + (ch - 64)
    return n - 1


def _sheet_part(zf: zipfile.ZipFile, title: str) -> str | None:
    """The zip member holding worksheet ``title``, from workbook.xml and its relationships."""
    wb = ET.fromstring(zf.read("xl/workbook.xml"))  # noqa: S314 - a local workbook; expat >= 2.4.1 stops entity bombs
    rid = None
    for sheet in wb.iter(f"{{{_NS_MAIN}}}sheet"):
        if sheet.get("name") == title:
            rid = sheet.get(f"{{{_NS_REL}}}id")
    if rid is None:
        return None
    rels = ET.fromstring(zf.read("xl/_rels/workbook.xml.rels"))  # noqa: S314 - as above
    for rel in rels.iter(f"{{{_NS_PKG}}}Relationship"):
        if rel.get("Id") == rid:
            target = rel.get("Target") or ""
            return target.lstrip("/") if target.startswith("/") else posixpath.normpath(posixpath.join("xl", target))
    return None


def _text_cell(ref: str, attrs: bytes, text: str) -> bytes:
    style = _STYLE.search(attrs)
    s_attr = style.group(0) if style else b""
    body = escape(_XML_ILLEGAL.sub("", text)).encode("utf-8")
    return (b'<c r="' + ref.encode() + b'"' + s_attr + b' t="inlineStr"><is><t xml:space="preserve">'
            + body + b"</t></is></c>")


def _patch_row(attrs: bytes, content: bytes, row: int, cells: dict[int, str]) -> bytes | None:
    """A ``<row>`` with ``cells`` (column -> text) set; None if the row cannot be patched safely."""
    found: list[tuple[int, bytes]] = []
    for m in _CELL.finditer(content):
        ref = _R_ATTR.search(m.group(1))
        if ref is None or int(ref.group(2)) != row:
            return None
        col = _col_index(ref.group(1))
        if col in cells:
            if m.group(2) and b"<f" in m.group(2):
                return None  # replacing a formula would leave calcChain and shared formulas dangling
            found.append((col, _text_cell(f"{_col_letters(col)}{row}", m.group(1), cells[col])))
        else:
            found.append((col, m.group(0)))
    rest = _CELL.sub(b"", content).strip()
    if rest and not rest.startswith(b"<extLst"):
        return None
    have = {c for c, _ in found}
    for col, text in cells.items():
        if col not in have:
            found.append((col, _text_cell(f"{_col_letters(col)}{row}", b"", text)))
    found.sort(key=lambda x: x[0])
    return b"<row" + _SPANS.sub(b"", attrs) + b">" + b"".join(x for _, x in found) + rest + b"</row>"


def _new_row(row: int, cells: dict[int, str]) -> bytes:
    return (f'<row r="{row}">'.encode() + b"".join(
        _text_cell(f"{_col_letters(c)}{row}", b"", cells[c]) for c in sorted(cells)) + b"</row>")


def _patch_sheet(xml: bytes, cells: list[tuple[int, int, str]]) -> bytes | None:
    """Worksheet XML with ``cells`` (0-based row, column, text) set; None if unsafe (use openpyxl).

    Rows missing from the XML (blank rows, rows appended below the data) are
    inserted in row order, as the format requires.
    """
    start = xml.find(b"<sheetData>")
    end = xml.find(b"</sheetData>")
    if start < 0 or end < 0:
        return None
    by_row: dict[int, dict[int, str]] = {}
    for i, c, text in cells:
        by_row.setdefault(i + 1, {})[c] = text
    pending = sorted(by_row)
    k = 0
    out: list[bytes] = []
    pos = 0
    last = 0
    for m in _ROW_OPEN.finditer(xml, start, end):
        if k == len(pending):
            break
        ref = _R_ATTR.search(m.group(1))
        if ref is None:
            return None
        row = int(ref.group(2))
        if row <= last:
            return None  # rows out of order: not a file we patch
        last = row
        inserted = []
        while k < len(pending) and pending[k] < row:
            inserted.append(_new_row(pending[k], by_row[pending[k]]))
            k += 1
        if inserted:
            out += [xml[pos:m.start()], *inserted]
            pos = m.start()
        if k == len(pending) or pending[k] != row:
            continue
        k += 1
        if m.group(2):  # <row .../>
            content, close = b"", m.end()
        else:
            close_at = xml.find(b"</row>", m.end(), end)
            if close_at < 0:
                return None
            content, close = xml[m.end():close_at], close_at + len(b"</row>")
        new = _patch_row(m.group(1), content, row, by_row[row])
        if new is None:
            return None
        out += [xml[pos:m.start()], new]
        pos = close
    if k < len(pending):
        out += [xml[pos:end], *(_new_row(r, by_row[r]) for r in pending[k:])]
        pos = end
    out.append(xml[pos:])
    return _widen_dimension(b"".join(out), cells)


def _widen_dimension(xml: bytes, cells: list[tuple[int, int, str]]) -> bytes:
    """The ``<dimension ref="A1:X9">`` (the used range readers trust) grown to take in ``cells``."""
    dim = _DIMENSION.search(xml)
    if not dim or not dim.group(3):
        return xml
    max_col = max(_col_index(dim.group(3)), *(c for _, c, _ in cells))
    max_row = max(int(dim.group(4)), *(i + 1 for i, _, _ in cells))
    new_dim = (b'<dimension ref="' + dim.group(1) + dim.group(2) + b":" + _col_letters(max_col).encode()
               + str(max_row).encode() + b'"')
    return xml[:dim.start()] + new_dim + xml[dim.end():]


def _patch_workbook(path: Path, title: str, cells: list[tuple[int, int, str]]) -> bytes | None:
    """The whole .xlsx with ``cells`` set in worksheet ``title``; every other member copied unchanged."""
    import io

    with zipfile.ZipFile(path) as zin:
        part = _sheet_part(zin, title)
        if part is None:
            return None
        sheet = _patch_sheet(zin.read(part), cells)
        if sheet is None:
            return None
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zout:
            for info in zin.infolist():
                data = sheet if info.filename == part else zin.read(info)
                zout.writestr(info, data, compress_type=info.compress_type)
    return buf.getvalue()
