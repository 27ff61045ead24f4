"""Optional cells (issue #11, item 6): a bad cell of an optional field blanks that field, not the row.

A mistyped phone or owner address keeps the row, logged and mailed, with the
field empty; the cell is reported (row, column, value, reason) as a note that
leaves the exit status 0. A bad key or required cell still rejects the row
(exit 1).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.fixtures.core import db_rows, make_workspace

MAPPING = """key = "email"
[fields]
email = { column = "Email", type = "email", required = true }
name  = { column = "Name", required = true }
owner = { column = "Owner", type = "email" }
phone = { column = "Phone", type = "phone", region = "CN" }
[writeback]
last_sent = "Last sent"
"""

NEW = """
[[campaign]]
id = "hello"
template = "hello"
trigger = "new"
"""

GOOD = {"Email": "good@example.com", "Name": "Good", "Owner": "owner@example.com", "Phone": "13800138000"}
BAD_PHONE = {"Email": "phone@example.com", "Name": "Phone", "Owner": "owner@example.com", "Phone": "12345"}
BAD_OWNER = {"Email": "owner@example.com", "Name": "Owner", "Owner": "li.na@", "Phone": ""}
PHONE_NOTE = "kept with phone blank: customers.csv row 3, \"Phone\": '12345' is not a phone number"
OWNER_NOTE = "kept with owner blank: customers.csv row 4, \"Owner\": 'li.na@' is not an address"


def _write(cfg: Path, rows: list[dict[str, str]]) -> None:
    with (cfg.parent / "customers.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _customers(cfg: Path) -> dict[str, dict]:
    return {k: json.loads(d) for k, d in db_rows(cfg.parent / "var" / "crm.sqlite", "SELECT key, data FROM customers")}


def test_rows_with_a_bad_phone_or_owner_are_logged_and_mailed_by_a_new_campaign(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", rows=[GOOD], mapping=MAPPING, campaigns=NEW)
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0  # campaign first seen
    _write(cfg, [GOOD, BAD_PHONE, BAD_OWNER])

    r = cli("sync", "--config", str(cfg), "--json", "--now", "2026-11-27T10:05")
    assert r.code == 0, r.out
    stage = json.loads(r.out)["stages"][0]
    assert stage["ok"] and stage["problems"] == []
    assert (stage["stats"]["added"], stage["stats"]["rejected"], stage["stats"]["blanked"]) == (2, 0, 2)
    assert len(stage["notes"]) == 2
    assert stage["notes"][0].startswith(PHONE_NOTE) and stage["notes"][1].startswith(OWNER_NOTE)

    customers = _customers(cfg)
    assert customers["phone@example.com"] == {"email": "phone@example.com", "name": "Phone",
                                              "owner": "owner@example.com", "phone": None}
    assert customers["owner@example.com"]["owner"] is None
    db = cfg.parent / "var" / "crm.sqlite"
    added = db_rows(db, "SELECT customer_key FROM activities WHERE kind = 'customer_added' ORDER BY customer_key")
    assert added == [("good@example.com",), ("owner@example.com",), ("phone@example.com",)]

    r = cli("send", "--config", str(cfg), "--json", "--now", "2026-11-27T10:10")
    assert r.code == 0, r.out
    sent = db_rows(db, "SELECT customer_key FROM sends WHERE campaign = 'hello' AND status = 'sent' "
                       "ORDER BY customer_key")
    assert sent == [("owner@example.com",), ("phone@example.com",)]  # good@ was there before the campaign
    emls = list((cfg.parent / "var" / "outbox").glob("*.eml"))
    assert len(emls) == 2


def test_human_output_shows_blanked_cells_apart_and_exits_0(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", rows=[GOOD, BAD_PHONE, BAD_OWNER], mapping=MAPPING)
    r = cli("sync", "--config", str(cfg))
    assert r.code == 0, r.err
    assert r.out.startswith("sync: ok (") and "blanked 2" in r.out
    assert f"  - {PHONE_NOTE}" in r.err and f"  - {OWNER_NOTE}" in r.err

    r = cli("check", "--config", str(cfg))
    assert r.code == 0, r.out
    assert "[ok ] sheet: customers.csv: 3 rows, 3 valid, 2 cell(s) to be left blank" in r.out
    assert f"      - {PHONE_NOTE}" in r.out and f"      - {OWNER_NOTE}" in r.out


def test_check_json_lists_blanked_cells_as_notes(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", rows=[GOOD, BAD_PHONE, BAD_OWNER], mapping=MAPPING)
    r = cli("check", "--config", str(cfg), "--json")
    assert r.code == 0, r.out
    out = json.loads(r.out)
    assert out["exit"] == 0
    sheet = next(c for c in out["checks"] if c["name"] == "sheet")
    assert sheet["ok"] and sheet["problems"] == []
    assert len(sheet["notes"]) == 2
    assert sheet["notes"][0].startswith(PHONE_NOTE) and sheet["notes"][1].startswith(OWNER_NOTE)


def test_a_bad_required_name_still_rejects_the_row_with_every_bad_cell_reported(tmp_path, cli):
    no_name = {"Email": "noname@example.com", "Name": "", "Owner": "x@", "Phone": "12345"}
    cfg = make_workspace(tmp_path / "ws", rows=[GOOD, no_name], mapping=MAPPING)
    for verb in ("sync", "check"):
        r = cli(verb, "--config", str(cfg), "--json")
        assert r.code == 1, r.out
        out = json.loads(r.out)
        item = out["stages"][0] if verb == "sync" else next(c for c in out["checks"] if c["name"] == "sheet")
        assert item["problems"] == [
            'customers.csv row 3, "Name" is empty (expected a value: the column is required)',
            "customers.csv row 3, \"Owner\": 'x@' is not an address (expected name@domain: There must be "
            "something after the @-sign.)",
            "customers.csv row 3, \"Phone\": '12345' is not a phone number (expected +country number or a CN "
            "number, e.g. +8613800138000)",
        ]
        assert "notes" not in item
    assert set(_customers(cfg)) == {"good@example.com"}


def test_a_blanked_cell_is_reported_at_every_sync_and_its_fix_is_a_field_change(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", rows=[GOOD, BAD_PHONE], mapping=MAPPING)
    assert cli("sync", "--config", str(cfg)).code == 0
    # The file did not change: it is skipped as unchanged, and the cell, still wrong, is reported again.
    r = cli("sync", "--config", str(cfg), "--json")
    stage = json.loads(r.out)["stages"][0]
    assert r.code == 0 and stage["stats"]["note"] == "sheet unchanged since the last sync"
    assert (stage["stats"]["added"], stage["stats"]["changed"], stage["stats"]["blanked"]) == (0, 0, 1)
    assert len(stage["notes"]) == 1 and stage["notes"][0].startswith(PHONE_NOTE)

    _write(cfg, [GOOD, dict(BAD_PHONE, Phone="139 0013 9000")])
    r = cli("sync", "--config", str(cfg), "--json")
    stage = json.loads(r.out)["stages"][0]
    assert r.code == 0 and "notes" not in stage
    assert (stage["stats"]["changed"], stage["stats"]["unchanged"]) == (1, 1)
    db = cfg.parent / "var" / "crm.sqlite"
    changes = [json.loads(d) for (d,) in db_rows(
        db, "SELECT details FROM activities WHERE kind = 'field_changed' AND customer_key = 'phone@example.com'")]
    assert [(c["field"], c["old"], c["new"]) for c in changes] == [("phone", None, "+8613900139000")]
    # Fixed, the row is hashed like any other: the next sync of the same file skips it.
    r = cli("sync", "--config", str(cfg), "--json")
    assert json.loads(r.out)["stages"][0]["stats"]["note"] == "sheet unchanged since the last sync"


def test_on_invalid_reject_row_on_an_optional_field_rejects_the_row(tmp_path, cli):
    mapping = MAPPING.replace('region = "CN" }', 'region = "CN", on_invalid = "reject_row" }')
    cfg = make_workspace(tmp_path / "ws", rows=[GOOD, BAD_PHONE], mapping=mapping)
    r = cli("sync", "--config", str(cfg), "--json")
    assert r.code == 1
    stage = json.loads(r.out)["stages"][0]
    assert stage["problems"][0].startswith("customers.csv row 3, \"Phone\": '12345' is not a phone number")
    assert "notes" not in stage and set(_customers(cfg)) == {"good@example.com"}


@pytest.mark.parametrize(("field", "what"), [("email", "the key field"), ("name", "a required field")])
def test_on_invalid_blank_on_the_key_or_a_required_field_is_a_config_error(tmp_path, cli, field, what):
    line = next(x for x in MAPPING.splitlines() if x.startswith(field))
    mapping = MAPPING.replace(line, line.replace(" }", ', on_invalid = "blank" }'))
    cfg = make_workspace(tmp_path / "ws", rows=[GOOD], mapping=mapping)
    for verb in ("check", "sync"):
        r = cli(verb, "--config", str(cfg))
        assert r.code == 2
        text = r.out + r.err
        assert f'customers.toml: fields.{field}: on_invalid = "blank" is not allowed on {what}' in text
        assert '(expected "reject_row", or leave on_invalid out)' in text
        assert "Traceback" not in text


def test_an_unknown_on_invalid_value_names_the_choices(tmp_path, cli):
    mapping = MAPPING.replace('region = "CN" }', 'region = "CN", on_invalid = "skip" }')
    cfg = make_workspace(tmp_path / "ws", rows=[GOOD], mapping=mapping)
    r = cli("check", "--config", str(cfg))
    assert r.code == 2
    assert "fields.phone.on_invalid is 'skip' (expected 'reject_row' or 'blank')" in r.out
