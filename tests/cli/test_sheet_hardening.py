"""Issue #9 through the CLI: duplicate headers, mixed CSV encodings, impossible dates, bad campaign choices.

Each case checks the exit code, that the message locates the fault, and that no traceback is printed.
"""

from __future__ import annotations

import json

from tests.fixtures.core import make_workspace

CHOICE_MAPPING = """key = "email"
[fields]
email = { column = "Email", type = "email", required = true }
name  = { column = "Name", required = true }
stage = { column = "Stage", type = "choice", choices = ["潜在客户", "意向", "报价", "成交", "流失"] }
signed = { column = "Signed", type = "date" }
[writeback]
last_sent = "Last sent"
"""

ROWS = [{"Email": "a@example.com", "Name": "A", "Stage": "意向", "Signed": "2026-11-24"},
        {"Email": "b@example.com", "Name": "B", "Stage": "成交", "Signed": ""}]


def _campaign(extra: str) -> str:
    return f'[[campaign]]\nid = "vip"\ntemplate = "hello"\n{extra}\n'


def _write_csv(cfg, lines: list[list[str]]) -> None:
    text = "".join(",".join(line) + "\r\n" for line in lines)
    (cfg.parent / "customers.csv").write_text(text, encoding="utf-8")


# ------------------------------------------------------------------ 4. campaign values outside a choice field


def test_check_refuses_a_where_value_outside_the_choices(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", rows=ROWS, mapping=CHOICE_MAPPING,
                         campaigns=_campaign('trigger = "at"\nat = "2026-12-20T10:00"\nwhere = { stage = "已成交" }'))
    r = cli("check", "--config", str(cfg))
    assert r.code == 2, r.out
    line = next(p for p in r.out.splitlines() if "已成交" in p)
    assert "campaigns.toml" in line and "'vip'" in line and "where.stage" in line
    assert '"潜在客户", "意向", "报价", "成交", "流失"' in line
    assert "Traceback" not in r.out + r.err


def test_sync_refuses_a_where_list_value_and_a_change_target_outside_the_choices(tmp_path, cli):
    campaigns = (_campaign('trigger = "new"\nwhere = { stage = ["意向", "成 交"] }')
                 + '[[campaign]]\nid = "won"\ntemplate = "hello"\ntrigger = "change"\nfield = "stage"\nto = "签约"\n')
    cfg = make_workspace(tmp_path / "ws", rows=ROWS, mapping=CHOICE_MAPPING, campaigns=campaigns)
    r = cli("sync", "--config", str(cfg))
    assert r.code == 2
    assert "where.stage" in r.err and "'成 交'" in r.err
    assert "'won'" in r.err and "to = '签约'" in r.err
    assert "Traceback" not in r.err


def test_choice_values_inside_the_choices_are_accepted(tmp_path, cli):
    campaigns = (_campaign('trigger = "new"\nwhere = { stage = ["意向", "报价"], name = "anything" }')
                 + '[[campaign]]\nid = "won"\ntemplate = "hello"\ntrigger = "change"\nfield = "stage"\nto = "成交"\n')
    cfg = make_workspace(tmp_path / "ws", rows=ROWS, mapping=CHOICE_MAPPING, campaigns=campaigns)
    r = cli("check", "--config", str(cfg))
    assert r.code == 0, r.out


# ------------------------------------------------------------------ 1. duplicate header names


def test_duplicate_mapped_header_makes_check_and_sync_exit_1(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", rows=ROWS, mapping=CHOICE_MAPPING)
    _write_csv(cfg, [["Email", "Name", "Stage", "Signed", "Note", "Name"],
                     ["a@example.com", "A", "意向", "", "x", "Alice"],
                     ["b@example.com", "B", "成交", "", "y", "Bob"]])
    r = cli("check", "--config", str(cfg))
    assert r.code == 1, r.out
    line = next(p for p in r.out.splitlines() if "columns B and F" in p)
    assert "customers.csv" in line and '"Name"' in line and "field name" in line
    assert "reads column B" in line and "rename one" in line

    r = cli("sync", "--config", str(cfg), "--json")
    assert r.code == 1
    stage = json.loads(r.out)["stages"][0]
    assert any("columns B and F" in p for p in stage["problems"])
    assert stage["stats"]["added"] == 2  # the rows themselves are fine: they are read from column B
    assert "Traceback" not in r.err


def test_duplicate_writeback_header_is_a_problem_and_an_unused_one_a_warning(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", rows=ROWS, mapping=CHOICE_MAPPING)
    _write_csv(cfg, [["Email", "Last sent", "Name", "Note", "Stage", "Note", "Last sent"],
                     ["a@example.com", "", "A", "x", "意向", "y", ""]])
    r = cli("check", "--config", str(cfg))
    assert r.code == 1, r.out
    problem = next(p for p in r.out.splitlines() if '"Last sent"' in p)
    assert "columns B and G" in problem and "write-back column last_sent" in problem
    note = next(p for p in r.out.splitlines() if '"Note"' in p)
    assert "columns D and F" in note and "no field uses it" in note


def test_duplicate_unused_header_alone_is_only_a_warning(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", rows=ROWS, mapping=CHOICE_MAPPING)
    _write_csv(cfg, [["Email", "Name", "Note", "Note"], ["a@example.com", "A", "x", "y"]])
    r = cli("check", "--config", str(cfg))
    assert r.code == 0, r.out
    assert 'header "Note" is in columns C and D' in r.out
    r = cli("sync", "--config", str(cfg))
    assert r.code == 0


# ------------------------------------------------------------------ 2. a CSV mixing encodings


def test_csv_with_utf8_header_and_gbk_rows_names_the_line_and_the_fix(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", rows=ROWS, mapping=CHOICE_MAPPING.replace('"Name"', '"客户名称"'))
    raw = "Email,客户名称,Stage\r\n".encode() + "a@example.com,张三,意向\r\nb@example.com,李四,成交\r\n".encode("gbk")
    (cfg.parent / "customers.csv").write_bytes(raw)
    for verb in ("check", "sync"):
        r = cli(verb, "--config", str(cfg))
        text = r.out + r.err
        assert r.code == 3, text
        assert "customers.csv line 2" in text and "张三" in text
        assert 'encoding = "gb18030"' in text and "CSV UTF-8" in text
        assert "Traceback" not in text


# ------------------------------------------------------------------ 3. impossible dates


def test_impossible_date_is_reported_as_not_a_date(tmp_path, cli):
    rows = [dict(ROWS[0], Signed="32/13/2026"), dict(ROWS[1], Signed="03/04/2026")]
    cfg = make_workspace(tmp_path / "ws", rows=rows, mapping=CHOICE_MAPPING)
    r = cli("check", "--config", str(cfg))
    assert r.code == 0  # signed is optional: the rows are kept with it blank (issue #11), the cells reported
    assert "kept with signed blank: customers.csv row 2, \"Signed\": '32/13/2026' is not a date" in r.out
    assert "row 3, \"Signed\": '03/04/2026' is ambiguous" in r.out
