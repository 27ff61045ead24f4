"""The column-at-a-time paths of a sync (issue #3's speed work) give exactly what the per-cell paths give.

fieldtypes.convert_column checks blocks of cells with one regular expression
and falls back to the per-cell converter; SheetData keeps columns; the log
builds customer JSON in SQLite. Each is compared here with the slow, obvious
way on values chosen to sit on the edges of the fast paths.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime

import pytest

from crm_automation import fieldtypes
from crm_automation.fieldtypes import FieldValueError, convert, convert_column
from crm_automation.models import Customer, FieldSpec, FieldType, SheetData
from crm_automation.sheets.grid import grid_to_data
from crm_automation.store.repo import Store


def spec(t: FieldType, **kw) -> FieldSpec:
    return FieldSpec(name="f", column="列", type=t, **kw)


def per_cell(s: FieldSpec, values: list) -> tuple[list, dict[int, str]]:
    out, errors = [], {}
    for i, v in enumerate(values):
        try:
            out.append(convert(v, s))
        except FieldValueError as e:
            out.append(None)
            errors[i] = e.reason
    return out, errors


def assert_same(s: FieldSpec, values: list) -> None:
    fieldtypes._email.cache_clear()
    fieldtypes._phone.cache_clear()
    got = convert_column(s, values)
    want = per_cell(s, values)
    assert got[1] == want[1]
    for i, (a, b) in enumerate(zip(got[0], want[0], strict=True)):
        assert (a, type(a)) == (b, type(b)), (i, values[i])


ODD_EMAILS = [
    "A@X.COM", " a@x.com", "a@x.com ", "x@a-.com", "x@-a.com", "x@a.c", "x@a.c0m", "x@xn--fiqs8s.cn",
    "x@ab--cd.com", "a--b@x.com", "x.@x.com", ".x@x.com", "x@x.invalid", "x@x.onion", "x@x.local", "x@x.test",
    "x@x.localhost", "x@x.arpa", "x@sub.test.com", "o'brien@x.ie", "a{b}@x.com", "a" * 64 + "@x.com",
    "a" * 65 + "@x.com", "x@" + "a" * 63 + ".com", "x@" + "a" * 64 + ".com",
    "x@" + ".".join(["abcdefghi"] * 24) + ".com", "x@" + ".".join(["abcdefghi"] * 26) + ".com",
    "x@1.2.3.4", "x@x.123", "a#b@x.org", "张三@例子.中国", "\u212aelvin@x.com", "a@x.com\nb@y.com", "a@x.com\r",
    "a@@x.com", "bob@", "@x.com", "plain", "a b@x.com", "a\t@x.com", 12345, 1.5, True, date(2026, 1, 1),
    None, "", "   ",
]


def test_email_column_equals_per_cell_with_each_odd_cell_alone_in_a_block(monkeypatch):
    monkeypatch.setattr(fieldtypes, "_BLOCK", 4)  # each odd cell shares its block only with common addresses
    values: list = []
    for i, odd in enumerate(ODD_EMAILS):
        common = [f"User{i}.{j}@Company{i}.com" for j in range(3)]
        common.insert(i % 4, odd)
        values += common
    assert_same(spec(FieldType.EMAIL), values)


def test_email_column_equals_per_cell_at_full_block_size():
    rnd = random.Random(7)
    values: list = [f"User{i}@Company{i % 50}.com" for i in range(3 * 1024)]
    for odd in ODD_EMAILS[:2]:
        values[rnd.randrange(len(values))] = odd
    assert_same(spec(FieldType.EMAIL), values + ODD_EMAILS)


def test_email_column_of_common_addresses_never_calls_the_per_cell_path():
    values = [f"first.last{i}@mail{i % 7}.example.com.cn" for i in range(2048)]
    fieldtypes._email.cache_clear()
    out, errors = convert_column(spec(FieldType.EMAIL), values)
    assert errors == {} and out == [v.lower() for v in values]
    assert fieldtypes._email.cache_info().misses == 0  # the block regex judged every cell


def test_phone_column_equals_per_cell_over_every_mobile_prefix_and_odd_forms(monkeypatch):
    monkeypatch.setattr(fieldtypes, "_BLOCK", 4)  # each tested cell shares its block only with valid mobiles
    rnd = random.Random(11)
    tested: list = []
    for prefix in range(1000, 2000):
        d = f"{prefix}{rnd.randrange(10**7):07d}"
        tested += [d, int(d), float(d), "+86" + d, f"{d[:3]}-{d[3:7]}-{d[7:]}", f"({d[:3]}) {d[3:]}"]
    tested += ["17900000000", "+8617900000000", "1380013800", "138001380000", "１３８００１３８０００", "138００138000", "+1 650-253-0000",
               "010-12345678", "\t13800138000", "13800138000\n13900139000", "13800138000.5", 13800138000.5, True,
               "abc", "", None, -13800138000, "+86 138 0013 8000", "8613800138000", "+85212345678"]
    for region in ("CN", None, "US"):
        good = "13800138000" if region == "CN" else "+8613800138000"
        values: list = []
        for i, t in enumerate(tested):
            block = [good] * 3
            block.insert(i % 4, t)
            values += block
        assert_same(spec(FieldType.PHONE, region=region), values)


def test_phone_column_of_mobiles_takes_the_block_path():
    values = [13000000000 + i * 7 for i in range(2048)]
    fieldtypes._phone.cache_clear()
    out, errors = convert_column(spec(FieldType.PHONE, region="CN"), values)
    assert errors == {} and out == [f"+86{v}" for v in values]
    assert fieldtypes._phone.cache_info().misses == 0


@pytest.mark.parametrize("t", [FieldType.TEXT, FieldType.CHOICE, FieldType.BOOL, FieldType.NUMBER, FieldType.DATE])
def test_repeating_and_mixed_columns_equal_per_cell(t):
    # 1, 1.0 and True are equal dict keys but different cells: a mixed column must not be folded.
    base = ["意向", " 意向 ", "报价", "", "  ", None, "是", "否", "1", "0", "2026年11月24日", "2026/11/24", "1,234.5"]
    mixed = [1, 1.0, True, 0, False, 45000.0, 45000, datetime(2026, 11, 24, 9, 30), date(2026, 11, 24)]
    s = spec(t, choices=("意向", "报价", "1"))
    assert_same(s, base * 200)  # text only: each distinct text converted once
    assert_same(s, (base + mixed) * 100)


def test_sheet_data_columns_rows_and_empty_rows():
    grid = [["邮箱", "姓名", "", "邮箱"], ["a@x.com", "甲"], ["", "  ", None], [" ", None, "x", "dup"],
            ["b@x.com", "乙", "c", "d", "extra"]]
    data = grid_to_data("s.csv", grid, "v1")
    assert data.headers == ("邮箱", "姓名")  # unnamed and repeated headers are not columns
    assert data.row_numbers == [2, 5]  # rows 3 and 4 have nothing in a named column
    assert data.column("邮箱") == ["a@x.com", "b@x.com"] and data.column("姓名") == ["甲", "乙"]
    assert data.column("absent") == [None, None]
    assert [(r.row, r.values) for r in data.rows] == [(2, {"邮箱": "a@x.com", "姓名": "甲"}),
                                                     (5, {"邮箱": "b@x.com", "姓名": "乙"})]
    again = SheetData("s.csv", ("邮箱", "姓名"), {"邮箱": ["c@x.com"]}, [7], "v2")
    assert again.column("姓名") == [None] and len(again) == 1
    assert [(r.row, r.values) for r in again.rows] == [(7, {"邮箱": "c@x.com", "姓名": None})]


def test_log_keeps_every_value_exactly_as_validated(log_location):
    store = Store.open(log_location)  # SQLite, then PostgreSQL (issue #20)
    now = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    odd = {"email": "q@x.com", "name": 'O\'Brien "Bob" \\ 张三 \n\t\x01 😀', "vip": True, "score": 0.1 + 0.2,
           "big": 2**70, "neg": -(2**63), "none": None, "zero": False, "date": "2026-11-24", "n": 7}
    plain = [Customer(f"c{i}@x.com", i + 2, {"email": f"c{i}@x.com", "name": f"客户{i}", "n": i}) for i in range(50)]
    bare = Customer("bare@x.com", 99, {})
    stats = store.apply_sync("s.xlsx", [Customer("q@x.com", 60, odd), *plain, bare], {}, {"q@x.com": "h1"}, now)
    assert stats.added == 52
    got = store.customers()
    assert got["q@x.com"].data == odd
    assert [type(v) for v in got["q@x.com"].data.values()] == [type(v) for v in odd.values()]
    assert list(got["q@x.com"].data) == list(odd)  # the mapping's field order is kept
    assert got["c7@x.com"].data == {"email": "c7@x.com", "name": "客户7", "n": 7} and got["bare@x.com"].data == {}
    assert store.row_hashes() == {"h1": "q@x.com"}
    added = store.conn.execute("SELECT customer_key, details FROM activities WHERE kind = 'customer_added'").fetchall()
    assert sorted(k for k, _ in added) == sorted(got)
    assert dict(added)["q@x.com"] and json.loads(dict(added)["q@x.com"]) == {"row": 60}
    # A second sync with one value changed logs one field_changed and no new customer_added.
    changed = dict(odd, vip=False)
    stats = store.apply_sync("s.xlsx", [Customer("q@x.com", 60, changed)],
                             {c.key: c.row for c in [*plain, bare]}, {}, now)
    assert (stats.added, stats.changed) == (0, 1)
    rows = store.conn.execute("SELECT kind, details FROM activities WHERE id > ? ORDER BY id", (len(added),)).fetchall()
    assert [(k, json.loads(d)) for k, d in rows] == [
        ("field_changed", {"field": "vip", "old": True, "new": False, "row": 60})]
    store.close()


@pytest.mark.parametrize("blank", ["", " ", "\u3000", " \t", "\x1f", "\n"])
@pytest.mark.parametrize("where", [0, 1, 4])
def test_blank_text_cells_become_empty_wherever_they_are(blank, where):
    names = ["a", "b", "c", "d", "e"]
    names[where] = blank
    grid = [["姓名", "公司"], *([n, "x"] for n in names), ["a\x00 \x00b", "y"]]
    data = grid_to_data("s.csv", grid, "")
    want = [None if not n.strip() else n for n in names] + ["a\x00 \x00b"]
    assert data.column("姓名") == want
    assert data.column("公司") == ["x"] * 5 + ["y"]


def test_first_sync_bulk_path_gives_what_the_row_by_row_path_gives(tmp_path, monkeypatch):
    from crm_automation.mapping import Mapping, load_mapping

    (tmp_path / "customers.toml").write_text(
        'key = "email"\n[fields]\nemail = { column = "邮箱", type = "email", required = true }\n'
        'name = { column = "姓名" }\nvip = { column = "VIP", type = "bool" }\nfax = { column = "传真" }\n',
        encoding="utf-8")
    m = load_mapping(tmp_path)
    grid = [["邮箱", "姓名", "VIP"], *([f"U{i}@X.com", f"客户{i}", "是" if i % 2 else 0] for i in range(300))]
    data = grid_to_data("s.xlsx", grid, "")
    fast = m.apply(data)
    monkeypatch.setattr(Mapping, "_all_new", lambda *a: False)
    slow = m.apply(data)
    assert [(c.key, c.row, c.data) for c in fast.customers] == [(c.key, c.row, c.data) for c in slow.customers]
    assert fast.hashes == slow.hashes and not fast.errors and len(fast.customers) == 300
    assert fast.customers[1].data == {"email": "u1@x.com", "name": "客户1", "vip": True, "fax": None}


def test_customer_columns_go_into_the_log_as_the_same_customers(log_location):
    from crm_automation.models import CustomerColumns

    now = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    keys = [f"k{i:03d}@x.com" for i in (5, 1, 3, 2, 4)]  # not in key order
    cols = CustomerColumns(("email", "vip", "fax", "name"), ("email", "vip", "name"), keys, [6, 2, 4, 3, 5],
                           [keys, [True, False, None, True, False], ["五", "一", "三", "二", "四"]])
    assert cols[1] == Customer("k001@x.com", 2, {"email": "k001@x.com", "vip": False, "fax": None, "name": "一"})
    assert cols[-1].row == 5 and [c.row for c in cols[1:3]] == [2, 4] and len(cols) == 5

    store = Store.open(log_location)  # SQLite, then PostgreSQL (issue #20)
    stats = store.apply_sync("s.xlsx", cols, {}, {k: f"h{k}" for k in keys}, now)
    assert stats.added == 5
    got = store.customers()
    for c in cols:
        assert got[c.key].data == c.data and list(got[c.key].data) == ["email", "vip", "fax", "name"]
        assert got[c.key].row == c.row
    assert store.row_hashes() == {f"h{k}": k for k in keys}
    added = store.conn.execute("SELECT customer_key, details FROM activities WHERE kind = 'customer_added' "
                               "ORDER BY id").fetchall()
    assert [k for k, _ in added] == sorted(keys)  # one each, in key order
    assert json.loads(dict(added)["k003@x.com"]) == {"row": 4}

    # The same columns again, now that the customers exist: the row-by-row path, nothing new, nothing changed.
    stats = store.apply_sync("s.xlsx", cols, {}, {k: f"h{k}" for k in keys}, now)
    assert (stats.added, stats.changed) == (0, 0)
    assert store.conn.execute("SELECT COUNT(*) FROM customers").fetchone() == (5,)
    store.close()


def test_a_changed_mapping_validates_unchanged_rows_again(tmp_path):
    from crm_automation.mapping import load_mapping

    def mapping(choices: str):
        (tmp_path / "customers.toml").write_text(
            'key = "email"\n[fields]\nemail = { column = "邮箱", type = "email", required = true }\n'
            f'stage = {{ column = "阶段", type = "choice", choices = [{choices}] }}\n', encoding="utf-8")
        return load_mapping(tmp_path)

    data = grid_to_data("s.xlsx", [["邮箱", "阶段"], ["a@x.com", "意向"], ["b@x.com", "报价"]], "")
    first = mapping('"意向", "报价"').apply(data)
    previous = {h: k for k, h in first.hashes.items()}
    assert not first.errors
    same = mapping('"意向", "报价"').apply(data, previous)
    assert same.unchanged == {"a@x.com": 2, "b@x.com": 3} and not same.customers
    narrower = mapping('"意向"').apply(data, previous)  # the cells did not change; the rules did
    assert [(e.row, e.value) for e in narrower.errors] == [(3, "报价")]
