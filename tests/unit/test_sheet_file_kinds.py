"""Issue #17: a sheet file of the wrong kind says what it is and which setting reads it; CSV errors name the line."""

from __future__ import annotations

from pathlib import Path

import openpyxl
import pytest

from crm_automation.errors import ConfigError, ServiceError
from crm_automation.sheets.csv import CsvSource
from crm_automation.sheets.excel import ExcelSource


def workbook(path: Path) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Email", "Name"])
    ws.append(["a@example.com", "A"])
    wb.save(path)
    return path


# -- an Excel file configured as CSV ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["customers.csv", "customers.xlsx"])
def test_an_xlsx_read_as_csv_says_it_is_a_workbook_and_suggests_excel(tmp_path, name):
    path = workbook(tmp_path / name)
    with pytest.raises(ConfigError) as ei:  # a setting to change, not a retry: exit 2
        CsvSource(path).read()
    assert str(ei.value) == f"{path}: the file is an Excel workbook (.xlsx) or another zip package, not CSV text " \
                            f"([sheet] source = \"csv\")"
    assert 'source = "excel"' in (ei.value.hint or "")
    assert ExcelSource(path).read().column("Email") == ["a@example.com"]  # and that setting does read it


def test_an_xls_read_as_csv_says_so(tmp_path):
    path = tmp_path / "customers.csv"
    path.write_bytes(bytes.fromhex("d0cf11e0a1b11ae1") + b"\x00" * 504)  # the OLE2 signature of .xls files
    with pytest.raises(ConfigError, match=r"Excel 97-2003 workbook \(\.xls\)") as ei:
        CsvSource(path).read()
    assert 'source = "excel"' in (ei.value.hint or "")


# -- a text file configured as Excel ---------------------------------------------------------------


@pytest.mark.parametrize(("data", "encoding"), [("Email,Name\na@example.com,A\n", "utf-8"),
                                                ("\ufeff邮箱,姓名\na@example.com,张三\n", "utf-8"),
                                                ("邮箱,姓名\na@example.com,张三\n", "gbk"),
                                                ("Email\tName\na@example.com\tA\n", "utf-16")])
def test_csv_text_read_as_excel_says_it_is_text_and_suggests_csv(tmp_path, data, encoding):
    path = tmp_path / "customers.xlsx"
    path.write_bytes(data.encode(encoding))
    with pytest.raises(ConfigError) as ei:
        ExcelSource(path).read()
    assert str(ei.value) == f"{path}: the file is text (CSV), not an Excel workbook ([sheet] source = \"excel\")"
    assert 'source = "csv"' in (ei.value.hint or "")


def test_an_html_table_saved_as_xls_is_named(tmp_path):
    path = tmp_path / "export.xls"
    path.write_text("<html><head><meta charset='utf-8'></head><body><table><tr><td>邮箱</td></tr></table>",
                    encoding="utf-8")
    with pytest.raises(ServiceError, match="is a web page") as ei:
        ExcelSource(path).read()
    assert "save it as .xlsx" in (ei.value.hint or "")


def test_an_empty_workbook_file_is_named_empty(tmp_path):
    path = tmp_path / "customers.xlsx"
    path.write_bytes(b"")
    with pytest.raises(ServiceError, match=r"the file is empty \(0 bytes"):
        ExcelSource(path).read()


def test_a_damaged_workbook_still_gets_the_generic_message(tmp_path):
    path = tmp_path / "customers.xlsx"
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    with pytest.raises(ServiceError, match="not a readable Excel workbook"):
        ExcelSource(path).read()


# -- CSV errors name the line ----------------------------------------------------------------------


def test_an_oversized_cell_names_the_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("Email,Name\na@example.com,A\nb@example.com," + "x" * 200_000 + "\n", encoding="utf-8")
    with pytest.raises(ServiceError) as ei:
        CsvSource(path).read()
    assert str(ei.value).startswith(f"{path} line 3: not readable as CSV: field larger than field limit")


def test_an_unclosed_quote_names_its_line_instead_of_swallowing_the_rest(tmp_path):
    # Python's csv reader made lines 4-6 one cell of row 4 without a word; sync then lost three customers.
    path = tmp_path / "c.csv"
    path.write_text('Email,Name\na@example.com,A\nb@example.com,B\nc@example.com,"Carol\nd@example.com,D\n'
                    'e@example.com,E\n', encoding="utf-8")
    with pytest.raises(ServiceError) as ei:
        CsvSource(path).read()
    assert str(ei.value).startswith(f"{path} line 4: a quoted cell starts in this row and its closing quote is "
                                    f"missing, so lines 4-6 (the rest of the file)")


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_closed_quotes_across_lines_still_read(tmp_path, newline):
    path = tmp_path / "c.csv"
    path.write_bytes(newline.join(['Email,Note', 'a@example.com,"two', 'lines"', 'b@example.com,"last',
                                   'cell"', '']).encode())
    data = CsvSource(path).read()
    assert data.column("Email") == ["a@example.com", "b@example.com"]
    assert data.row_numbers == [2, 3]
