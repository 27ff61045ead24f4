"""A CSV customer sheet on a shared drive (the grid logic the adapters share is in :mod:`.grid`).

Encodings: UTF-8, UTF-8 with BOM, UTF-16 with BOM (Excel's "Unicode text") and
GBK/GB18030, which is what Chinese Excel saves as "CSV" by default. Without a
BOM, UTF-8 is tried first and GB18030 (a superset of GBK and GB2312) second.
A file that switches between UTF-8 and GBK part-way (rows appended by
another program) is refused, naming the line where it switches, instead of
being read with one part garbled (issue #9).
The delimiter (``,`` ``;`` or tab) is detected from the header line unless
``[sheet] delimiter`` is set; ``[sheet] encoding`` overrides detection.

Write-back rewrites the whole file atomically (a temporary file in the same
folder, then ``os.replace``) in the same encoding, delimiter and line ending.
A value starting with ``=``, ``+``, ``-``, ``@``, tab or CR is written with a
leading single quote (``'=cmd``): Excel evaluates such CSV cells as formulas
(CSV injection, see OWASP "CSV Injection"), and CSV has no cell type to say
"text". Reading removes that one quote again (``'=cmd`` reads as ``=cmd``), so
values round-trip; the worker compares its values in the stored form, so it
does not rewrite them every cycle.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from crm_automation.config import Config
from crm_automation.errors import ConfigError, DataError, ServiceError
from crm_automation.models import SheetData
from crm_automation.sheets.filesheet import FileSheet, Loaded
from crm_automation.sheets.grid import append_plan, escape_formula, file_version, grid_to_data, unescape_formula

# ------------------------------------------------------------------ the CSV adapter


def _detect_encoding(raw: bytes) -> str | None:
    if raw.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    for enc in ("utf-8", "gb18030"):
        try:
            raw.decode(enc)
        except UnicodeDecodeError:
            continue
        return enc
    return None


_GBK = "GBK/GB18030"
_CJK = re.compile(r"[\u3000-\u9fff\uff00-\uffef]")  # CJK punctuation, ideographs, full-width forms
_NON_ASCII = re.compile(r"[^\x00-\x7f\ufeff]")


def _reads_as_chinese(text: str) -> bool:
    """Whether text that decoded as UTF-8 is UTF-8 Chinese, not GBK bytes that happen to be valid UTF-8.

    Short GBK names are valid UTF-8 about one time in ten, but they decode to
    Latin, Greek or Cyrillic letters (2-byte sequences); real Chinese in
    UTF-8 is 3-byte sequences that decode to ideographs.
    """
    sample = text[:65536]
    cjk = len(_CJK.findall(sample))
    return cjk >= 2 and cjk * 2 >= len(_NON_ASCII.findall(sample))


@dataclass(frozen=True, slots=True)
class _Switch:
    """Where a file changes between UTF-8 and GBK: sheet tools append rows in their own encoding (issue #9)."""

    line: int  # 1-based line of the file where the second encoding starts
    before: str  # the first part's encoding, as shown to the user
    after: str  # the second part's, or "neither UTF-8 nor GBK/GB18030"
    before_line: int
    before_text: str
    after_text: str


def _first_non_ascii(raw: bytes, start: int, end: int) -> int:
    """Start offset of the first line in ``raw[start:end]`` that is not plain ASCII (``start`` if none)."""
    pos = start
    while pos < end:
        nl = raw.find(b"\n", pos, end)
        stop = end if nl < 0 else nl + 1
        if not raw[pos:stop].isascii():
            return pos
        pos = stop
    return start


def _line_text(raw: bytes, start: int, enc: str) -> str:
    """The line starting at byte ``start`` as it reads in ``enc`` (shortened for a message)."""
    nl = raw.find(b"\n", start)
    text = raw[start:len(raw) if nl < 0 else nl].decode(enc, errors="replace").strip("\r\ufeff")
    return text if len(text) <= 60 else text[:59] + "…"


def _encoding_switch(raw: bytes) -> _Switch | None:
    """A file that is UTF-8 for a while and then GBK, or GBK and then UTF-8; None otherwise.

    Only a part that plainly reads as Chinese counts as UTF-8 (see
    :func:`_reads_as_chinese`), so a GBK file is never taken for a mixed one.
    Cost: one UTF-8 pass, plus a walk back over the lines that end the file
    (usually one) for a GBK file.
    """
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw.rfind(b"\n", 0, e.start) + 1  # the line holding the first byte that is not UTF-8
    else:
        return None
    n_bad = raw.count(b"\n", 0, bad) + 1
    if bad and _reads_as_chinese(raw[:bad].decode("utf-8")):  # UTF-8, then something else
        first = _first_non_ascii(raw, 0, bad)
        try:
            raw[bad:].decode("gb18030")
            after = _GBK
        except UnicodeDecodeError:
            after = f"neither UTF-8 nor {_GBK}"
        return _Switch(n_bad, "UTF-8", after, raw.count(b"\n", 0, first) + 1, _line_text(raw, first, "utf-8"),
                       _line_text(raw, bad, "gb18030"))
    tail = len(raw)  # the lines at the end that are valid UTF-8 start here
    while tail > bad:
        start = raw.rfind(b"\n", 0, tail - 1) + 1
        line = raw[start:tail]
        if not line.isascii():
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                break
        tail = start
    if tail >= len(raw) or not _reads_as_chinese(raw[tail:].decode("utf-8")):
        return None
    try:
        raw[:tail].decode("gb18030")
    except UnicodeDecodeError:
        return None
    first, switch = _first_non_ascii(raw, 0, tail), _first_non_ascii(raw, tail, len(raw))
    return _Switch(raw.count(b"\n", 0, switch) + 1, _GBK, "UTF-8", raw.count(b"\n", 0, first) + 1,
                   _line_text(raw, first, "gb18030"), _line_text(raw, switch, "utf-8"))


def _lines(first: int, last: int) -> str:
    return f"line {first}" if first == last else f"lines {first}-{last}"


def _switch_error(path: Path, sw: _Switch) -> ServiceError:
    """The message for a mixed file: where it switches, how each side reads, and the two ways out."""
    head, rest = _lines(1, sw.line - 1), f"lines {sw.line} on"
    other = head if sw.before != "UTF-8" else rest
    fix = f"save the sheet as \"CSV UTF-8\" with {other} retyped or re-imported as UTF-8"
    if _GBK in (sw.before, sw.after):
        fix += ", or make it all GBK and set [sheet] encoding = \"gb18030\" in config.toml"
    reads = f"reads as {sw.after}" if sw.after in ("UTF-8", _GBK) else f"is {sw.after}"
    return ServiceError(
        f"{path} line {sw.line}: the encoding changes here: line {sw.line} {reads} (\"{sw.after_text}\") but "
        f"line {sw.before_line} before it reads as {sw.before} (\"{sw.before_text}\") "
        f"(expected one encoding for the whole file)",
        hint=f"{head} and {rest} were saved by different programs; make the file one encoding: {fix}")


def _ascii_lines(enc: str) -> bool:
    """Whether a line break is one byte in ``enc`` (not so in UTF-16), so lines can be counted in bytes."""
    try:
        return b"\n".decode(enc) == "\n"
    except (LookupError, UnicodeDecodeError):
        return False


def _where(path: Path, enc: str, e: UnicodeDecodeError) -> str:
    """``path line N`` of a decoding error; just ``path`` where lines cannot be counted in bytes.

    ``e.object`` is what the codec saw: without the BOM for utf-8-sig.
    """
    if not _ascii_lines(enc):
        return str(path)
    line = bytes(e.object).count(b"\n", 0, e.start) + 1
    return f"{path} line {line}"


def _got(e: UnicodeDecodeError) -> str:
    """The bytes a codec refused, as hex."""
    return ("byte " if e.end - e.start == 1 else "bytes ") + bytes(e.object[e.start:e.end]).hex(" ")


def _undecodable_error(path: Path, raw: bytes, enc: str, e: UnicodeDecodeError) -> ServiceError:
    """``[sheet] encoding`` names an encoding the file is not in: where it fails, and what it likely is."""
    likely = _detect_encoding(raw)
    if likely is not None:
        try:
            raw.decode(likely)
        except UnicodeDecodeError:
            likely = None  # a BOM, and then something else
    label = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "utf-16": "UTF-16", "gb18030": _GBK}
    if likely is not None:
        hint = (f"the file reads as {label[likely]}: set [sheet] encoding = \"{likely}\" in config.toml, or "
                f"remove the key so the encoding is detected")
    else:
        hint = (f"the file is neither UTF-8 nor {_GBK}: save the sheet as \"CSV UTF-8\" and remove [sheet] "
                f"encoding from config.toml (the encoding is then detected)")
    return ServiceError(f"{_where(path, enc, e)}: cannot decode the file as {enc} ([sheet] encoding): got {_got(e)}, "
                        f"which {enc} does not allow (expected a file saved as {enc})", hint=hint)


_ZIP = b"PK\x03\x04"  # .xlsx, .xlsm, .ods: a zip package
_OLE2 = bytes.fromhex("d0cf11e0a1b11ae1")  # .xls (Excel 97-2003), and password-protected .xlsx


def _not_csv(path: Path, raw: bytes) -> ConfigError | None:
    """A workbook saved under a ``.csv`` name or configured as ``source = "csv"`` (issue #17).

    Decided by the file's first bytes (its signature), not by its name:
    read as text, such a file used to fail as "neither UTF-8 nor GBK" or
    yield a header row of binary garbage, and the user saw no reason. A
    ConfigError (exit 2): ``[sheet] source`` is the fix, not a retry.
    """
    if raw.startswith(_ZIP):
        what = "an Excel workbook (.xlsx) or another zip package"
    elif raw.startswith(_OLE2):
        what = "an Excel 97-2003 workbook (.xls) or an encrypted workbook"
    else:
        return None
    return ConfigError(f"{path}: the file is {what}, not CSV text ([sheet] source = \"csv\")",
                       hint="set [sheet] source = \"excel\" in config.toml to read it as a workbook, or save the "
                             "sheet as \"CSV UTF-8\"")


def _csv_error(path: Path, e: csv.Error, line: int) -> ServiceError:
    """A CSV syntax error, naming the line of the file where the reader stopped (issue #17)."""
    return ServiceError(f"{path} line {line}: not readable as CSV: {e} (expected comma-, semicolon- or "
                        f"tab-separated text, quotes closed on each cell)",
                        hint="open the file in a spreadsheet program and save it again as \"CSV UTF-8\"")


def _unclosed_quote(path: Path, text: str, delim: str, grid: list[list[str]]) -> ServiceError | None:
    """A quote opened in the last record and never closed: it swallows the rest of the file (issue #17).

    Python's csv reader (not strict) ends such a cell at the end of the file
    without a word, so every row after the stray quote would silently be one
    cell, and sync would take those customers for removed. Only a last record
    whose cells span lines is looked at again, in strict mode, so the common
    file costs one scan of its last row.
    """
    if not grid or not any("\n" in v or "\r" in v for v in grid[-1]):
        return None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    start = 1
    for rows, _ in enumerate(reader, start=1):  # find the line where the last record starts
        if rows == len(grid):
            break
        start = reader.line_num + 1
    lines = io.StringIO(text, newline="").readlines()  # split as the reader splits: \n, \r\n or \r
    tail = "".join(lines[start - 1:])
    try:
        list(csv.reader(io.StringIO(tail, newline=""), delimiter=delim, strict=True))
    except csv.Error:
        end = len(lines)
        return ServiceError(
            f"{path} line {start}: a quoted cell starts in this row and its closing quote is missing, so lines "
            f"{start}-{end} (the rest of the file) would read as one cell (expected a \" at the end of the "
            f"cell; a quote inside a cell is written twice: \"\")",
            hint="fix the quote in that row (a text editor shows it), or save the sheet again from a spreadsheet "
                 "program")
    return None


def _detect_delimiter(text: str) -> str:
    """The delimiter most frequent in the header line, outside quotes; ``,`` by default."""
    counts = dict.fromkeys([",", ";", "\t"], 0)
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch in "\r\n" and not quoted:
            break
        elif not quoted and ch in counts:
            counts[ch] += 1
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


@dataclass(frozen=True, slots=True)
class _Layout:
    """How the file was written, so a save keeps it: encoding, delimiter, line ending."""

    encoding: str
    delimiter: str
    newline: str


class CsvSource(FileSheet[str, _Layout]):
    """A ``.csv`` customer sheet (``[sheet] source = "csv"``).

    Opening errors, the write-back steps and the atomic save are the file
    sheets' (:class:`~crm_automation.sheets.filesheet.FileSheet`); a save keeps
    the file's encoding, delimiter and line ending.
    """

    def __init__(self, path: Path, *, encoding: str | None = None, delimiter: str | None = None) -> None:
        super().__init__(path)
        self._encoding = encoding
        self._delimiter = delimiter

    @classmethod
    def from_config(cls, cfg: Config) -> Self:
        """Build from ``[sheet]``: ``path``, optional ``encoding`` and ``delimiter``."""
        if not cfg.sheet.path:
            raise ConfigError(f"{cfg.path}: sheet.path is required when sheet.source = \"csv\"")
        delim = cfg.sheet.delimiter
        if delim is not None:
            delim = {"\\t": "\t", "tab": "\t"}.get(delim, delim)
            if len(delim) != 1:
                raise ConfigError(f"{cfg.path}: sheet.delimiter is {cfg.sheet.delimiter!r} (expected one character, "
                                  f"e.g. \",\", \";\" or \"\\t\")")
        if cfg.sheet.encoding is not None:
            try:
                codecs.lookup(cfg.sheet.encoding)
            except LookupError:
                raise ConfigError(f"{cfg.path}: sheet.encoding is {cfg.sheet.encoding!r}, which Python does not know "
                                  f"(expected e.g. \"utf-8\", \"utf-8-sig\" or \"gb18030\")") from None
        return cls(cfg.resolve(cfg.sheet.path), encoding=cfg.sheet.encoding, delimiter=delim)

    # -- reading

    def _load(self) -> Loaded[str, _Layout]:
        """Grid, version, and encoding, delimiter and line ending of the file as it is now."""
        with self._opening():
            version = file_version(self.path)
            raw = self.path.read_bytes()
        wrong = _not_csv(self.path, raw)
        if wrong is not None:
            raise wrong
        text, enc = self._decode(raw)
        delim = self._delimiter or _detect_delimiter(text)
        newline = "\r\n" if "\r\n" in text[:65536] else "\n"
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
        try:
            grid = list(reader)
        except csv.Error as e:
            raise _csv_error(self.path, e, reader.line_num) from None
        unclosed = _unclosed_quote(self.path, text, delim, grid)
        if unclosed is not None:
            raise unclosed
        return Loaded(grid, version, _Layout(enc, delim, newline))

    def _decode(self, raw: bytes) -> tuple[str, str]:
        """Text and encoding of the file; a file that switches encoding part-way is refused (issue #9).

        Each part alone would decode, one of them as garbled text (headers then
        do not match the mapping and the user sees no reason), so the switch
        is looked for whenever UTF-8 or GBK is in play: after a failed decode,
        and when the file reads as GBK (by detection or by ``[sheet] encoding``).
        """
        enc = self._encoding or _detect_encoding(raw)
        if enc is None:
            sw = _encoding_switch(raw)
            if sw is not None:
                raise _switch_error(self.path, sw)
            raise ServiceError(f"{self.path}: the file is neither UTF-8 nor GBK/GB18030 text",
                               hint="save it as \"CSV UTF-8\" or set [sheet] encoding")
        try:
            text = raw.decode(enc)
        except UnicodeDecodeError as e:
            sw = _encoding_switch(raw) if _ascii_lines(enc) else None
            if sw is not None:
                raise _switch_error(self.path, sw) from None
            if self._encoding is None:  # a BOM said UTF-8 but the rest is not
                name = "UTF-8" if enc == "utf-8-sig" else "UTF-16"
                raise ServiceError(f"{_where(self.path, enc, e)}: cannot decode the file as {name}: got {_got(e)} "
                                   f"(expected {name} text: the file starts with a {name} byte order mark)",
                                   hint="save the sheet again as \"CSV UTF-8\"") from None
            raise _undecodable_error(self.path, raw, enc, e) from None
        except LookupError as e:
            raise ServiceError(f"{self.path}: cannot decode the file as {enc}: {e}",
                               hint="fix [sheet] encoding, or remove it to detect the encoding") from None
        if codecs.lookup(enc).name in ("gb18030", "gbk", "gb2312"):
            sw = _encoding_switch(raw)
            if sw is not None:
                raise _switch_error(self.path, sw)
        return text.removeprefix("\ufeff"), enc

    def read(self) -> SheetData:
        """Read the whole file (one read of the file); ``'=x`` written by the guard reads as ``=x``."""
        loaded = self._load()
        grid = [[unescape_formula(v) if v[:1] == "'" else v for v in line] for line in loaded.grid]
        return grid_to_data(self.name, grid, loaded.version)

    # -- writing

    def _stored(self, value: str) -> str:
        return escape_formula(value)

    def _save(self, loaded: Loaded[str, _Layout]) -> str | None:
        """Rewrite the file atomically from ``loaded.grid``; a reason, and the file untouched, if postponed.

        Postponed when the file is no longer at the version the grid was read
        from just before the rename: someone saved meanwhile, and their edit
        must not be overwritten.
        """
        how = loaded.layout

        def save(tmp: Path) -> None:
            buf = io.StringIO()
            csv.writer(buf, delimiter=how.delimiter, lineterminator=how.newline).writerows(loaded.grid)
            try:
                data = buf.getvalue().encode(how.encoding)
            except UnicodeEncodeError as e:
                bad = e.object[e.start:e.end]
                raise DataError(
                    f"{self.path}: {bad!r} cannot be written in the file's encoding {how.encoding}",
                    hint="save the sheet as \"CSV UTF-8\" or set [sheet] encoding = \"utf-8-sig\"",
                ) from None
            tmp.write_bytes(data)

        def recheck() -> str | None:
            if file_version(self.path) != loaded.version:
                return f"{self.path} changed while it was being written; write-back waits for the next cycle"
            return None

        return self._replace(save, recheck)

    def _write_cells(self, loaded: Loaded[str, _Layout], cells: list[tuple[int, int, str]]) -> str | None:
        for i, c, text in cells:
            line = loaded.grid[i]
            if c >= len(line):
                line.extend([""] * (c + 1 - len(line)))
            line[c] = text
        return self._save(loaded)

    def append_rows(self, rows: list[dict[str, str]]) -> int:
        """Append rows at the end (new header columns added as needed); values are formula-escaped."""
        if not rows:
            return 0
        loaded = self._load()
        lines = append_plan(loaded.grid, rows, stored=escape_formula)
        loaded.grid.extend(lines)
        if self._save(loaded) is not None:
            raise ServiceError(f"{self.path} changed while rows were being added; rows not added")
        return len(lines)
