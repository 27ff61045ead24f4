"""import FILE: plan (dry run) and apply, on real CSV/Excel files."""

from __future__ import annotations

import csv
import os

import openpyxl
import pytest

from crm_automation.errors import ConfigError, ServiceError
from crm_automation.importer import apply_import, parse_column_map, plan_import, write_report
from crm_automation.mapping import load_mapping
from crm_automation.sheets.csv import CsvSource
from crm_automation.sheets.excel import ExcelSource

MAPPING = """
key = "email"

[fields]
email   = { column = "邮箱", type = "email", required = true }
name    = { column = "客户名称", required = true }
stage   = { column = "阶段", type = "choice", choices = ["潜在客户", "意向", "报价", "成交", "流失"] }
phone   = { column = "电话", type = "phone", region = "CN" }

[writeback]
email_status = "邮件状态"
"""


@pytest.fixture
def mapping(tmp_path):
    d = tmp_path / "mappings"
    d.mkdir()
    (d / "customers.toml").write_text(MAPPING, encoding="utf-8")
    return load_mapping(d)


def write_csv(path, rows, encoding="utf-8"):
    with path.open("w", encoding=encoding, newline="") as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.fixture
def sheet(tmp_path):
    return CsvSource(write_csv(tmp_path / "customers.csv", [
        ["邮箱", "客户名称", "阶段", "电话", "邮件状态"],
        ["a@x.com", "阿里", "意向", "13800138000", "ok"],
        ["b@x.com", "百度", "", "", ""],
        ["broken@", "坏行", "", "", ""],
    ]))


@pytest.fixture
def export(tmp_path):
    # Another tool's export, saved by Chinese Excel: GBK, English headers.
    return CsvSource(write_csv(tmp_path / "export.csv", [
        ["Email", "Name", "Stage", "Mobile", "Notes"],
        ["A@X.com", "阿里", "意向", "138 0013 8000", "same as sheet"],      # row 2: unchanged
        ["b@x.com", "百度", "报价", "+86 139 0013 9000", "stage, phone"],  # row 3: update
        ["new@x.com", "新公司", "潜在客户", "", ""],                        # row 4: add
        ["bad", "坏", "", "", ""],                                          # row 5: rejected
        ["NEW@x.com", "重复", "", "", ""],                                   # row 6: duplicate in file
        ["broken@", "坏行", "", "", ""],                                     # row 7: rejected (invalid)
        ["c@x.com", "", "意向", "", ""],                                    # row 8: rejected (name required)
        ["d@x.com", "丁", "随便", "", ""],                                  # row 9: rejected (choice)
    ], encoding="gbk"))


COLUMN_MAP = {"Email": "邮箱", "Name": "客户名称", "Stage": "阶段", "Mobile": "电话"}


def test_plan_adds_updates_rejects_and_dedupes(sheet, export, mapping):
    plan = plan_import(export.read(), sheet.read(), mapping, COLUMN_MAP)
    assert [(a.key, a.row, a.values) for a in plan.add] == [
        ("new@x.com", 4, {"邮箱": "new@x.com", "客户名称": "新公司", "阶段": "潜在客户"})]
    assert [(u.key, u.values, u.old) for u in plan.update] == [
        ("b@x.com", {"阶段": "报价", "电话": "+8613900139000"}, {"阶段": None, "电话": None})]
    assert plan.unchanged == 1
    assert [(e.row, e.column) for e in plan.rejected] == [(5, "邮箱"), (7, "邮箱"), (8, "客户名称"), (9, "阶段")]
    assert "is not an address" in plan.rejected[0].reason
    assert [(e.row, e.value) for e in plan.duplicates] == [(6, "new@x.com")]
    assert "row 4" in plan.duplicates[0].reason
    assert plan.key_column == "邮箱"


def test_dry_run_plan_does_not_touch_the_sheet(sheet, export, mapping):
    before = sheet.path.read_bytes(), sheet.path.stat().st_mtime_ns
    plan_import(export.read(), sheet.read(), mapping, COLUMN_MAP)
    assert (sheet.path.read_bytes(), sheet.path.stat().st_mtime_ns) == before


def test_apply_writes_and_a_second_import_changes_nothing(sheet, export, mapping):
    plan = plan_import(export.read(), sheet.read(), mapping, COLUMN_MAP)
    assert apply_import(plan, sheet) == 2
    data = sheet.read()
    rows = {r.values["邮箱"]: r for r in data.rows}
    assert rows["b@x.com"].values["阶段"] == "报价"
    assert rows["b@x.com"].values["电话"] == "+8613900139000"
    assert ",'+8613900139000," in sheet.path.read_text(encoding="utf-8")  # CSV guards values starting with '+'
    assert rows["b@x.com"].values["邮件状态"] is None
    assert rows["new@x.com"].row == 5
    assert rows["a@x.com"].values["邮件状态"] == "ok"  # untouched
    again = plan_import(export.read(), data, mapping, COLUMN_MAP)
    assert again.add == []
    assert again.update == []
    assert again.unchanged == 3


def test_existing_key_on_an_invalid_sheet_row_is_not_added_twice(tmp_path, mapping):
    sheet = CsvSource(write_csv(tmp_path / "s.csv", [["邮箱", "客户名称", "阶段"], ["a@x.com", "阿里", "不存在的阶段"]]))
    export = CsvSource(write_csv(tmp_path / "e.csv", [["邮箱", "客户名称"], ["a@x.com", "阿里"]]))
    plan = plan_import(export.read(), sheet.read(), mapping, {})
    assert plan.add == []
    assert len(plan.duplicates) == 1
    assert "already in the sheet at row 2" in plan.duplicates[0].reason


def test_columns_found_by_sheet_name_or_field_name_without_a_map(tmp_path, mapping, sheet):
    export = CsvSource(write_csv(tmp_path / "e.csv", [["EMAIL", "客户名称", "phone"], ["z@x.com", "Z", "13700137000"]]))
    plan = plan_import(export.read(), sheet.read(), mapping, {})
    assert plan.add[0].values == {"邮箱": "z@x.com", "客户名称": "Z", "电话": "+8613700137000"}


def test_missing_required_column_lists_the_files_headers(tmp_path, mapping, sheet):
    export = CsvSource(write_csv(tmp_path / "e.csv", [["Mail", "Name"], ["z@x.com", "Z"]]))
    with pytest.raises(ConfigError) as e:
        plan_import(export.read(), sheet.read(), mapping, {"Name": "客户名称"})
    assert '"邮箱" (field email)' in str(e.value)
    assert '"Mail", "Name"' in str(e.value)
    assert "--map" in (e.value.hint or "")


def test_map_naming_an_absent_column_is_an_error(export, sheet, mapping):
    with pytest.raises(ConfigError, match="'E-mail'"):
        plan_import(export.read(), sheet.read(), mapping, {"E-mail": "邮箱"})


def test_parse_column_map():
    assert parse_column_map(["Email=邮箱", " Name = 客户名称 "]) == {"Email": "邮箱", "Name": "客户名称"}
    for bad in ["Email", "=邮箱", "Email="]:
        with pytest.raises(ConfigError, match="EXPORT_COLUMN=SHEET_COLUMN"):
            parse_column_map([bad])


def test_report_file_lists_rejected_and_duplicate_rows(sheet, export, mapping, tmp_path):
    plan = plan_import(export.read(), sheet.read(), mapping, COLUMN_MAP)
    out = tmp_path / "rejected.csv"
    assert write_report(plan, out) == 5
    with out.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["row", "column", "value", "problem", "reason"]
    assert [r[0] for r in rows[1:]] == ["5", "6", "7", "8", "9"]
    assert rows[2][3] == "duplicate"
    assert rows[1][2] == "bad"


def test_sheet_changed_since_the_plan_is_refused(sheet, export, mapping):
    plan = plan_import(export.read(), sheet.read(), mapping, COLUMN_MAP)
    st = sheet.path.stat()
    with sheet.path.open("a", encoding="utf-8") as f:
        f.write("e@x.com,E,,,\n")
    os.utime(sheet.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ServiceError, match="changed since it was read"):
        apply_import(plan, sheet)


def test_import_into_excel_from_excel_export(tmp_path, mapping):
    wb = openpyxl.Workbook()
    wb.active.append(["邮箱", "客户名称", "阶段", "电话"])
    wb.active.append(["a@x.com", "阿里", "意向", 13800138000])
    wb.save(tmp_path / "customers.xlsx")
    wb = openpyxl.Workbook()
    wb.active.append(["Email", "Name", "Mobile"])
    wb.active.append(["n@x.com", "新", 13900139000])
    wb.active.append(["a@x.com", "阿里", 13800138000])
    wb.save(tmp_path / "export.xlsx")
    target = ExcelSource(tmp_path / "customers.xlsx")
    plan = plan_import(ExcelSource(tmp_path / "export.xlsx").read(), target.read(), mapping,
                       {"Email": "邮箱", "Name": "客户名称", "Mobile": "电话"})
    assert (len(plan.add), len(plan.update), plan.unchanged) == (1, 0, 1)
    assert apply_import(plan, target) == 1
    rows = target.read().rows
    assert rows[-1].row == 3
    assert rows[-1].values["电话"] == "+8613900139000"
