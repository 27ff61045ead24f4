"""``on_invalid`` (issue #11, item 6): which failing cells reject their row and which are blanked.

``Mapping.apply`` has a bulk path for a first sync (every row valid, keys
distinct) and a row-by-row path; a blanked cell must give the same customers
on both, and leave its row without a hash so that it is validated and
reported again at the next sync.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crm_automation.errors import ConfigError
from crm_automation.mapping import BlankedCell, Mapping, load_mapping
from crm_automation.models import CustomerColumns, FieldSpec, FieldType, OnInvalid, RowError
from crm_automation.sheets.grid import grid_to_data

MAPPING = """key = "email"
[fields]
email = { column = "邮箱", type = "email", required = true }
name  = { column = "客户名称", required = true }
owner = { column = "负责人邮箱", type = "email" }
phone = { column = "电话", type = "phone", region = "CN" }
stage = { column = "阶段", type = "choice", choices = ["意向", "成交"], on_invalid = "reject_row" }
"""
HEADERS = ["邮箱", "客户名称", "负责人邮箱", "电话", "阶段"]


def load(tmp_path: Path, text: str = MAPPING) -> Mapping:
    (tmp_path / "customers.toml").write_text(text, encoding="utf-8")
    return load_mapping(tmp_path)


def data(*rows: list[str]):
    return grid_to_data("s.csv", [HEADERS, *rows], "")


def as_dicts(customers) -> list[tuple[str, int, dict]]:
    return [(c.key, c.row, c.data) for c in customers]


def test_defaults_reject_for_the_key_and_required_fields_and_blank_the_others(tmp_path):
    m = load(tmp_path)
    assert {n: f.on_invalid for n, f in m.fields.items()} == {
        "email": OnInvalid.REJECT_ROW, "name": OnInvalid.REJECT_ROW, "owner": OnInvalid.BLANK,
        "phone": OnInvalid.BLANK, "stage": OnInvalid.REJECT_ROW}
    assert FieldSpec("f", "c").on_invalid is OnInvalid.REJECT_ROW  # a hand-made spec keeps the old rule


def test_blank_on_the_key_and_a_required_field_is_refused_with_both_problems(tmp_path):
    text = (MAPPING.replace('type = "email", required = true }', 'type = "email", required = true, '
                            'on_invalid = "blank" }')
            .replace('required = true }', 'required = true, on_invalid = "blank" }'))
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    path = tmp_path / "customers.toml"
    assert e.value.problems == [
        f'{path}: fields.email: on_invalid = "blank" is not allowed on the key field: a row without it cannot be '
        'kept (expected "reject_row", or leave on_invalid out)',
        f'{path}: fields.name: on_invalid = "blank" is not allowed on a required field: a row without it cannot be '
        'kept (expected "reject_row", or leave on_invalid out)']


def test_a_bad_optional_cell_is_blanked_on_the_bulk_path_and_its_row_left_without_a_hash(tmp_path):
    m = load(tmp_path)
    sheet = data(["a@x.com", "甲", "li@x.com", "13800138000", "意向"],
                 ["b@x.com", "乙", "li@", "12345", "成交"],
                 ["c@x.com", "丙", "", "", ""])
    res = m.apply(sheet, blank_invalid=True)
    assert isinstance(res.customers, CustomerColumns)  # still the bulk path
    assert not res.errors
    assert as_dicts(res.customers)[1] == ("b@x.com", 3, {"email": "b@x.com", "name": "乙", "owner": None,
                                                        "phone": None, "stage": "成交"})
    assert [(b.field, b.error.row, b.error.column, b.error.value) for b in res.blanked] == [
        ("owner", 3, "负责人邮箱", "li@"), ("phone", 3, "电话", "12345")]
    assert str(res.blanked[1]).startswith("kept with phone blank: s.csv row 3, \"电话\": '12345' is not a phone")
    assert set(res.hashes) == {"a@x.com", "c@x.com"}


def test_the_row_path_gives_what_the_bulk_path_gives(tmp_path):
    m = load(tmp_path)
    rows = [["a@x.com", "甲", "li@x.com", "13800138000", "意向"], ["b@x.com", "乙", "li@", "12345", "成交"]]
    bulk = m.apply(data(*rows), blank_invalid=True)
    # A rejected row (a stage off the list: reject_row) sends the whole pass down the row-by-row path.
    slow = m.apply(data(*rows, ["z@x.com", "子", "", "", "别的"]), blank_invalid=True)
    assert not isinstance(slow.customers, CustomerColumns)
    assert as_dicts(slow.customers) == as_dicts(bulk.customers)
    assert slow.blanked == bulk.blanked and slow.hashes == bulk.hashes
    assert [(e.row, e.column) for e in slow.errors] == [(4, "阶段")]


def test_a_rejected_row_reports_its_blankable_cells_as_errors_too(tmp_path):
    m = load(tmp_path)
    res = m.apply(data(["a@x.com", "", "li@", "12345", ""]), blank_invalid=True)
    assert not res.customers and not res.blanked
    assert [(e.column, e.value) for e in res.errors] == [("客户名称", None), ("负责人邮箱", "li@"), ("电话", "12345")]
    assert res.rejected_keys == {"a@x.com": 2}


def test_without_blank_invalid_every_bad_cell_rejects_its_row_as_before(tmp_path):
    """``import`` calls it so: it writes rows into the sheet, where a dropped cell would be lost."""
    m = load(tmp_path)
    res = m.apply(data(["a@x.com", "甲", "", "", ""], ["b@x.com", "乙", "li@", "", ""]))
    assert [c.key for c in res.customers] == ["a@x.com"] and not res.blanked
    assert res.errors == [RowError("s.csv", 3, "负责人邮箱", "li@", res.errors[0].reason)]
    assert res.rejected_keys == {"b@x.com": 3}


def test_a_blanked_row_is_validated_again_until_fixed(tmp_path):
    m = load(tmp_path)
    rows = [["a@x.com", "甲", "li@x.com", "", ""], ["b@x.com", "乙", "", "12345", ""]]
    first = m.apply(data(*rows), blank_invalid=True)
    previous = {h: k for k, h in first.hashes.items()}
    again = m.apply(data(*rows), previous, blank_invalid=True)
    assert again.unchanged == {"a@x.com": 2}
    assert [c.key for c in again.customers] == ["b@x.com"] and again.blanked == first.blanked
    fixed = m.apply(data(rows[0], ["b@x.com", "乙", "", "139 0013 9000", ""]), previous, blank_invalid=True)
    assert as_dicts(fixed.customers) == [("b@x.com", 3, {"email": "b@x.com", "name": "乙", "owner": None,
                                                         "phone": "+8613900139000", "stage": None})]
    assert not fixed.blanked and set(fixed.hashes) == {"a@x.com", "b@x.com"}


def test_repeated_bad_values_in_a_long_column_blank_each_of_their_rows(tmp_path):
    """Long columns of repeating text are converted once per distinct value (fieldtypes' memo)."""
    m = load(tmp_path)
    rows = [[f"c{i}@x.com", f"客户{i}", "bad@" if i % 10 == 3 else f"o{i % 4}@x.com", "", "意向"]
            for i in range(200)]
    res = m.apply(data(*rows), blank_invalid=True)
    assert isinstance(res.customers, CustomerColumns) and len(res.customers) == 200
    assert [b.error.row for b in res.blanked] == [i + 2 for i in range(200) if i % 10 == 3]
    assert all(c.data["owner"] is None for c in res.customers if c.row in {b.error.row for b in res.blanked})
    assert len(res.hashes) == 200 - 20


def test_a_hand_made_required_spec_saying_blank_still_rejects():
    specs = {"email": FieldSpec("email", "邮箱", FieldType.EMAIL, required=True, on_invalid=OnInvalid.BLANK),
             "phone": FieldSpec("phone", "电话", FieldType.PHONE, region="CN", on_invalid=OnInvalid.BLANK)}
    m = Mapping(path=Path("customers.toml"), key="email", fields=specs, writeback={})
    sheet = grid_to_data("s.csv", [["邮箱", "电话"], ["bob@", "1"], ["a@x.com", "1"]], "")
    res = m.apply(sheet, blank_invalid=True)
    assert [(e.row, e.column) for e in res.errors] == [(2, "邮箱"), (2, "电话")]
    assert [c.key for c in res.customers] == ["a@x.com"]
    assert res.blanked == [BlankedCell("phone", RowError("s.csv", 3, "电话", "1", res.blanked[0].error.reason))]
