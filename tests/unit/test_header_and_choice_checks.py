"""Issue #9 in the mapping: duplicate headers reported, campaign values checked against a choice field's choices."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from crm_automation.errors import ConfigError
from crm_automation.mapping import Mapping, load_campaigns, load_mapping
from crm_automation.models import SheetData
from crm_automation.sheets.base import column_letters
from crm_automation.sheets.grid import grid_to_data

TZ = ZoneInfo("Asia/Shanghai")
MAPPING = """key = "email"
[fields]
email = { column = "邮箱", type = "email", required = true }
name  = { column = "客户名称" }
stage = { column = "阶段", type = "choice", choices = ["潜在客户", "意向", "报价", "成交", "流失"] }
level = { column = "等级", type = "choice", choices = ["1", "2", "3"] }
[writeback]
last_sent = "最近发送"
"""


@pytest.fixture
def mapping(tmp_path: Path) -> Mapping:
    (tmp_path / "customers.toml").write_text(MAPPING, encoding="utf-8")
    return load_mapping(tmp_path)


def test_column_letters():
    assert [column_letters(i) for i in (0, 1, 25, 26, 27, 51, 52, 701, 702)] == [
        "A", "B", "Z", "AA", "AB", "AZ", "BA", "ZZ", "AAA"]


@pytest.mark.parametrize("bulk", [True, False], ids=["first-sync-bulk-path", "row-by-row-path"])
def test_a_mapped_header_over_two_columns_is_a_row_1_error_naming_both_columns(mapping, monkeypatch, bulk):
    if not bulk:
        monkeypatch.setattr(Mapping, "_all_new", lambda *a: False)
    grid = [["邮箱", "客户名称", "阶段", "备注", "", "客户名称"], ["a@x.com", "张三", "意向", "", "", "张三丰"]]
    res = mapping.apply(grid_to_data("customers.xlsx [客户]", grid, ""))
    assert [str(e) for e in res.errors] == [
        'customers.xlsx [客户] row 1, "客户名称" heads columns B and F, so field name is ambiguous: the worker reads '
        "column B (the first) and ignores F (expected each header once: rename one of the columns)"]
    assert [c.data["name"] for c in res.customers] == ["张三"]  # still read, from the first column
    assert not any("客户名称" in w for w in res.warnings)


def test_a_writeback_header_twice_is_an_error_and_an_unused_one_a_warning(mapping):
    grid = [["最近发送", "邮箱", "备注", "备注", "最近发送", "备注"], ["", "a@x.com", "x", "y", "", "z"]]
    res = mapping.apply(grid_to_data("customers.csv", grid, ""))
    assert len(res.errors) == 1
    err = res.errors[0]
    assert (err.row, err.column) == (1, "最近发送")
    assert "columns A and E" in err.reason and "write-back column last_sent" in err.reason
    assert "reads and writes column A" in err.reason
    assert ('customers.csv: header "备注" is in columns C, D and F; no field uses it, so only column C counts '
            "(rename the others if they matter)") in res.warnings
    assert len(res.customers) == 1


def test_no_duplicate_headers_no_reports(mapping):
    res = mapping.apply(grid_to_data("customers.csv", [["邮箱", "客户名称"], ["a@x.com", "A"]], ""))
    assert not res.errors
    assert all("header" not in w for w in res.warnings)
    plain = SheetData("customers.csv", ("邮箱",), {"邮箱": ["a@x.com"]}, [2])  # e.g. the importer's renamed columns
    assert not mapping.apply(plain).errors


def _campaigns(tmp_path: Path, mapping: Mapping, text: str):
    (tmp_path / "campaigns.toml").write_text(text, encoding="utf-8")
    return load_campaigns(tmp_path, mapping, TZ)


def test_where_values_outside_the_choices_are_refused_with_file_id_field_value_and_choices(tmp_path, mapping):
    with pytest.raises(ConfigError) as e:
        _campaigns(tmp_path, mapping, '[[campaign]]\nid = "year-end"\ntemplate = "t"\ntrigger = "at"\n'
                                      'at = "2026-12-20T10:00"\nwhere = { stage = "已成交" }\n'
                                      '[[campaign]]\nid = "vip"\ntemplate = "t"\ntrigger = "new"\n'
                                      'where = { stage = ["意向", "报价 "], level = 4 }\n')
    assert e.value.problems == [
        f"{tmp_path / 'campaigns.toml'}: campaign[0] (id 'year-end'): where.stage = '已成交' is not one of the "
        'choices of field stage (expected one of "潜在客户", "意向", "报价", "成交", "流失")',
        f"{tmp_path / 'campaigns.toml'}: campaign[1] (id 'vip'): where.stage = '报价 ' is not one of the "
        'choices of field stage (expected one of "潜在客户", "意向", "报价", "成交", "流失")',
        f"{tmp_path / 'campaigns.toml'}: campaign[1] (id 'vip'): where.level = '4' is not one of the "
        'choices of field level (expected one of "1", "2", "3")',
    ]


def test_change_to_outside_the_choices_is_refused(tmp_path, mapping):
    with pytest.raises(ConfigError, match=r"campaign\[0\] \(id 'quote'\): to = '报价单' is not one of the choices "
                                          r"of field stage \(expected one of \"潜在客户\""):
        _campaigns(tmp_path, mapping, '[[campaign]]\nid = "quote"\ntemplate = "t"\ntrigger = "change"\n'
                                      'field = "stage"\nto = "报价单"\n')


def test_values_inside_the_choices_and_values_of_other_fields_load(tmp_path, mapping):
    got = _campaigns(tmp_path, mapping, '[[campaign]]\nid = "vip"\ntemplate = "t"\ntrigger = "new"\n'
                                        'where = { stage = ["意向", "报价"], level = 2, name = "whatever" }\n'
                                        '[[campaign]]\nid = "quote"\ntemplate = "t"\ntrigger = "change"\n'
                                        'field = "name"\nto = "anything"\n')
    assert got[0].where == {"stage": ("意向", "报价"), "level": ("2",), "name": ("whatever",)}
    assert got[1].to == "anything"
