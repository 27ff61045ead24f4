"""The store's statements rewritten in SQL both engines accept (issue #20, store/dialect.py) keep what they did.

``UPDATE OR IGNORE`` (no PostgreSQL form) became an update guarded by ``NOT
EXISTS`` on the unique key; ``INSERT OR IGNORE`` became ``ON CONFLICT DO
NOTHING``; SQLite's two-argument ``MIN`` a ``CASE``. The cases here are the
ones where the old forms silently skipped a row: a rename onto a key a
customer already has must leave that row where it was, not fail the unit.
Each runs over both backends (``log_location``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crm_automation.models import SendStatus, StepState
from crm_automation.store.repo import Store

T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def store(log_location):
    s = Store.open(log_location)  # each test runs on SQLite, then on PostgreSQL
    yield s
    s.close()


def _queue(store: Store, campaign: str, step_id: str, key: str, status: SendStatus = SendStatus.SENT) -> None:
    store.queue_sends([{"campaign": campaign, "step": 0, "step_id": step_id, "customer_key": key,
                        "status": status.value, "message_id": f"<{campaign}.{step_id}.{key}>",
                        "queued_at": "2026-03-01T02:00:00Z", "error": None, "email": key}])


def _keys(store: Store) -> set[tuple[str, str | None, str]]:
    return {(r.campaign, r.step_id, r.customer_key) for r in store.sends()}


def test_a_campaign_rename_leaves_a_customers_row_the_new_key_has_already(store: Store) -> None:
    _queue(store, "old", "intro", "a@example.com")
    _queue(store, "old", "intro", "b@example.com")
    _queue(store, "new", "intro", "b@example.com")  # b already has the new key's send
    store.campaign_first_seen(["old"], T0)
    store.campaign_first_seen(["new"], T0 + timedelta(days=2))
    store.record_campaign_edits({}, [("old", "new")], [], T0 + timedelta(days=3))
    assert _keys(store) == {("new", "intro", "a@example.com"), ("new", "intro", "b@example.com"),
                            ("old", "intro", "b@example.com")}
    # the renamed campaign keeps the earlier first-seen time, so its audience stays the same
    assert store.campaign_first_seen(["new"], T0 + timedelta(days=4), record=False)["new"] == T0


def test_a_campaign_rename_keeps_the_new_keys_steps_and_takes_the_old_ones(store: Store) -> None:
    store.record_campaign_edits({"old": {"intro": StepState("t1", 0), "later": StepState("t2", 1)},
                                 "new": {"intro": StepState("t9", 0)}}, [], [], T0)
    store.record_campaign_edits({}, [("old", "new")], [], T0 + timedelta(days=1))
    steps = store.campaign_steps()
    assert "old" not in steps
    assert steps["new"]["intro"].template == "t9"  # the new key's own step is left as it was
    assert steps["new"]["later"].template == "t2"


def test_a_step_rename_leaves_a_customers_row_the_new_step_has_already(store: Store) -> None:
    _queue(store, "promo", "s1", "a@example.com")
    _queue(store, "promo", "s1", "b@example.com")
    _queue(store, "promo", "s2", "b@example.com")
    store.record_campaign_edits({}, [], [("promo", "s1", "s2")], T0)
    assert _keys(store) == {("promo", "s2", "a@example.com"), ("promo", "s2", "b@example.com"),
                            ("promo", "s1", "b@example.com")}


def test_legacy_rows_adopt_their_step_id_unless_the_customer_has_it_already(store: Store) -> None:
    for key in ("a@example.com", "b@example.com"):
        store.conn.execute("INSERT INTO sends (campaign, step, step_id, customer_key, status, kind) "
                           "VALUES ('promo', 1, NULL, ?, 'sent', 'campaign_step')", (key,))
    _queue(store, "promo", "follow", "b@example.com")
    assert store.adopt_step_ids({("promo", 1): "follow"}) == 1
    assert _keys(store) == {("promo", "follow", "a@example.com"), ("promo", "follow", "b@example.com"),
                            ("promo", None, "b@example.com")}


def test_inserting_an_existing_key_changes_nothing_and_says_so(store: Store) -> None:
    _queue(store, "promo", "s1", "a@example.com", SendStatus.QUEUED)
    again = store.queue_sends([{"campaign": "promo", "step": 0, "step_id": "s1", "customer_key": "a@example.com",
                                "status": "skipped", "message_id": None, "queued_at": "2026-03-02T00:00:00Z",
                                "error": "x", "email": "a@example.com"}])
    assert again == 0
    assert [r.status for r in store.sends()] == [SendStatus.QUEUED]
