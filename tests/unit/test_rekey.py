"""Re-keying the log (issue #17, item 3): the pure plan, and the store applying it in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from crm_automation.mapping import load_mapping
from crm_automation.models import Customer, SheetData
from crm_automation.rekey import infer_key_field, key_change, plan_rekey
from crm_automation.store.repo import Store

T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
MAPPING = """key = "{key}"
[fields]
{email}
name = {{ column = "Name", required = true }}
customer_id = {{ column = "ID", type = "{id_type}" }}
"""
EMAIL_FIELD = 'email = { column = "Email", type = "email", required = true }'


@dataclass
class Known:
    key: str
    row: int
    data: dict[str, Any] = field(default_factory=dict)
    present: bool = True


def mapping(tmp_path: Path, key: str = "customer_id", *, with_email: bool = True, id_type: str = "text"):
    (tmp_path / "customers.toml").write_text(
        MAPPING.format(key=key, email=EMAIL_FIELD if with_email else "", id_type=id_type), encoding="utf-8")
    return load_mapping(tmp_path)


def sheet(rows: list[tuple[Any, ...]], headers: tuple[str, ...] = ("Email", "Name", "ID")) -> SheetData:
    cols = {h: [r[i] for r in rows] for i, h in enumerate(headers)}
    return SheetData("customers.csv", headers, cols, list(range(2, len(rows) + 2)))


def log(*rows: tuple[str, int, str]) -> dict[str, Known]:
    return {k: Known(k, r, {"email": k, "name": n}) for k, r, n in rows}


def test_moves_each_customer_by_its_old_key_wherever_its_row_went(tmp_path):
    m = mapping(tmp_path)
    known = log(("a@x.com", 2, "A"), ("b@x.com", 3, "B"))
    # Rows swapped and a new row inserted since the last sync: matched by the email, not the position.
    data = sheet([("new@x.com", "N", "C9"), ("B@X.com", "B", "C2"), ("a@x.com", "A", "C1")])
    plan = plan_rekey("email", m, data, known)
    assert plan.problems == ()
    assert {(mv.old, mv.new, mv.row) for mv in plan.moves} == {("a@x.com", "C1", 4), ("b@x.com", "C2", 3)}
    assert "old key column" in plan.by


def test_every_conflict_is_listed_and_nothing_is_planned(tmp_path):
    m = mapping(tmp_path)
    known = log(("a@x.com", 2, "A"), ("b@x.com", 3, "B"), ("c@x.com", 4, "C"), ("d@x.com", 5, "D"),
                ("gone@x.com", 6, "G"), ("e@x.com", 7, "E"), ("taken", 8, "T"))
    known["taken"].present = False  # no longer in the sheet: keeps its key, which nobody may take
    data = sheet([("a@x.com", "A", "C1"), ("b@x.com", "B", "C1"),  # two customers, one new key
                  ("c@x.com", "C", ""),  # no new key
                  ("d@x.com", "D", "C4"), ("d@x.com", "D2", "C5"),  # one customer, two rows
                  ("e@x.com", "E", "taken")])  # a key another customer keeps
    plan = plan_rekey("email", m, data, known)
    text = "\n".join(plan.problems)
    assert "rows 2 and 3: customers 'a@x.com' and 'b@x.com' would both get customer_id 'C1'" in text
    assert "row 4, \"ID\" is empty: customer 'c@x.com' would have no customer_id" in text
    assert "rows 5 and 6: both are customer 'd@x.com'" in text
    assert "customer 'gone@x.com' (row 6 at the last sync) is not in the sheet" in text
    assert "customer_id 'taken' of customer 'e@x.com' is already the key of another customer" in text
    assert len(plan.problems) == 5


def test_a_swap_of_keys_between_two_customers_is_allowed(tmp_path):
    m = mapping(tmp_path)
    known = log(("a@x.com", 2, "A"), ("b@x.com", 3, "B"))
    plan = plan_rekey("email", m, sheet([("a@x.com", "A", "b@x.com"), ("b@x.com", "B", "a@x.com")]), known)
    assert plan.problems == ()
    assert {(mv.old, mv.new) for mv in plan.moves} == {("a@x.com", "b@x.com"), ("b@x.com", "a@x.com")}


def test_without_the_old_key_column_rows_are_matched_by_row_number_and_moved_rows_refused(tmp_path):
    m = mapping(tmp_path, with_email=False)
    known = log(("a@x.com", 2, "Ann"), ("b@x.com", 3, "Bob"))
    ok = plan_rekey("email", m, sheet([("Ann", "C1"), ("Bob", "C2")], ("Name", "ID")), known)
    assert ok.problems == () and "row number" in ok.by
    assert {(mv.old, mv.new) for mv in ok.moves} == {("a@x.com", "C1"), ("b@x.com", "C2")}
    # Sorted since the last sync: row 2 now holds Bob. Refused, naming what disagrees.
    moved = plan_rekey("email", m, sheet([("Bob", "C2"), ("Ann", "C1")], ("Name", "ID")), known)
    assert len(moved.problems) == 2 and "name: the log has 'Ann', the row 'Bob'" in moved.problems[0]


def test_a_missing_new_key_column_is_one_clear_problem(tmp_path):
    m = mapping(tmp_path)
    plan = plan_rekey("email", m, sheet([("a@x.com", "A")], ("Email", "Name")), log(("a@x.com", 2, "A")))
    assert plan.problems == ('customers.csv: the new key column "ID" (field customer_id) is not in the header row '
                             '(headers found: "Email", "Name"); expected it to hold each customer\'s customer_id',)


def test_customers_gone_at_the_last_sync_keep_their_old_key(tmp_path):
    m = mapping(tmp_path)
    known = log(("a@x.com", 2, "A"), ("old@x.com", 9, "O"))
    known["old@x.com"].present = False
    plan = plan_rekey("email", m, sheet([("a@x.com", "A", "C1")]), known)
    assert plan.problems == () and plan.kept == ("old@x.com",)


def test_key_change_names_both_keys_and_the_command(tmp_path):
    m = mapping(tmp_path)
    assert key_change(None, m) is None and key_change("customer_id", m) is None
    e = key_change("email", m)
    assert e is not None and e.exit_code == 2
    assert 'key = "customer_id"' in str(e) and 'keyed by "email"' in str(e) and "crm-automation rekey" in str(e)


def test_an_older_log_adopts_the_field_its_keys_were_built_from():
    customers = [Known("a@x.com", 2, {"email": "a@x.com", "customer_id": "C1"}),
                 Known("b@x.com", 3, {"email": "b@x.com", "customer_id": "C2"})]
    assert infer_key_field("email", customers) == "email"
    assert infer_key_field("customer_id", customers) == "email"  # the mapping was changed in the same upgrade
    assert infer_key_field("customer_id", []) == "customer_id"
    assert infer_key_field("customer_id", [Known("x", 2, {"name": "y"})]) == "customer_id"  # no evidence


# ---------------------------------------------------------------- the store


@pytest.fixture
def store(log_location):
    s = Store.open(log_location)  # SQLite, then PostgreSQL (issue #20)
    yield s
    s.close()


def seed(store: Store) -> None:
    store.apply_sync("sheet", [Customer("a@x.com", 2, {"email": "a@x.com", "name": "A"}),
                               Customer("b@x.com", 3, {"email": "b@x.com", "name": "B"})], {}, {}, T0)
    store.queue_sends([{"campaign": "welcome", "step": 0, "customer_key": k, "status": "queued",
                        "message_id": f"<{k}>", "queued_at": "2026-11-27T02:00:00Z", "error": None, "email": k}
                       for k in ("a@x.com", "b@x.com")])
    store.quarantine(source="inbox", raw=b"x", error="bad", now=T0, from_addr="a@x.com", customer_key="a@x.com")
    store.set_sheet_state("sheet", "fp", 2, [], T0)


def snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    return {t: store.conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("customers", "activities", "sends", "quarantine", "sheet_state", "meta")}


def test_store_moves_every_keyed_row_in_one_go(store):
    seed(store)
    counts = store.rekey([("a@x.com", "C1", "C1"), ("b@x.com", "C2", "C2")], "customer_id")
    assert counts.tables == {"customers": 2, "activities": 2, "quarantine": 1, "sends": 2, "plan_due": 0}
    assert sorted(store.customers()) == ["C1", "C2"]
    assert store.customer("C1").data == {"email": "a@x.com", "name": "A", "customer_id": "C1"}
    assert {s.customer_key for s in store.sends()} == {"C1", "C2"}
    assert [a.kind.value for a in store.timeline("C1")] == ["customer_added"]
    assert store.quarantined_contacts()[0].customer_key == "C1"
    assert store.key_field() == "customer_id"
    assert store.sheet_state("sheet") is None  # the next sync reads the sheet


def test_store_dry_run_counts_and_changes_nothing(store):
    seed(store)
    before = snapshot(store)
    counts = store.rekey([("a@x.com", "C1", "C1"), ("b@x.com", "C2", "C2")], "customer_id", dry_run=True)
    assert counts.tables == {"customers": 2, "activities": 2, "quarantine": 1, "sends": 2, "plan_due": 0}
    assert snapshot(store) == before


def test_store_swaps_keys_without_meeting_the_unique_indexes(store):
    seed(store)
    store.rekey([("a@x.com", "b@x.com", "b@x.com"), ("b@x.com", "a@x.com", "a@x.com")], "other")
    assert store.customer("b@x.com").data["name"] == "A" and store.customer("a@x.com").data["name"] == "B"
    assert {s.message_id: s.customer_key for s in store.sends()} == {"<a@x.com>": "b@x.com", "<b@x.com>": "a@x.com"}
