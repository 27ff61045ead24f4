"""Which workers are dead (issue #20, rule 1): the rule, the store part that applies it, and its config key.

The rule is a pure function (``fleet.dead_workers``); the store records the
rows, answers whether a worker's session lock is free (PostgreSQL) and marks
the dead stopped; recovery then takes only rows with no live holder. The
store part runs on both engines.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crm_automation.config import load_config
from crm_automation.errors import ConfigError
from crm_automation.fleet import Solo, dead_workers, reap
from crm_automation.models import SendStatus
from crm_automation.store.repo import Store
from crm_automation.store.workers import WorkerRow

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
MINUTE = timedelta(seconds=60)


def row(wid: str, beat_ago: float, *, stopped: bool = False) -> WorkerRow:
    return WorkerRow(wid, "h", 1, NOW - timedelta(hours=1), NOW - timedelta(seconds=beat_ago), None,
                     NOW if stopped else None)


def test_a_worker_is_dead_when_its_lock_is_free_or_its_heartbeat_is_older_than_the_timeout():
    rows = [row("fresh", 10), row("stale", 61), row("locked-out", 1), row("stopped", 500, stopped=True),
            row("me", 999)]
    assert dead_workers(rows, {"locked-out"}, NOW, MINUTE, me="me") == ["stale", "locked-out"]
    assert dead_workers(rows, set(), NOW, MINUTE, me="me") == ["stale"]  # "me" is never dead to itself
    assert dead_workers([row("edge", 60)], set(), NOW, MINUTE, me="me") == []  # exactly the timeout: alive


def test_alone_every_other_running_worker_is_a_killed_ones():
    rows = [row("fresh", 1), row("me", 1), row("stopped", 1, stopped=True)]
    assert dead_workers(rows, set(), NOW, MINUTE, me="me", alone=True) == ["fresh"]


@contextmanager
def sessions(log_location: str, *ids: str) -> Iterator[None]:
    """On PostgreSQL, each worker's session holding its lock (as a running worker's does); SQLite has none."""
    if not log_location.startswith("postgresql://"):
        yield
        return
    from crm_automation.store.postgres import Member

    members = [Member(log_location, None, wid) for wid in ids]
    try:
        for m in members:
            m.join()
        yield
    finally:
        for m in members:
            m.leave()


def test_the_store_records_workers_and_recovery_takes_only_rows_without_a_live_holder(log_location):
    store = Store.open(log_location)
    with closing(store), sessions(log_location, "live/1/a", "stale/2/b", "me/3/c"):
        store.register_worker("live/1/a", "live", 1, NOW)
        store.register_worker("stale/2/b", "stale", 2, NOW - timedelta(minutes=5))
        store.register_worker("me/3/c", "me", 3, NOW)
        assert store.beat("live/1/a", NOW, "send") is True
        with store.transaction():
            store.conn.execute("INSERT INTO customers (key, row, data, first_seen, last_changed, email_status, "
                               "present) VALUES ('k', 1, '{}', '2026-12-01', '2026-12-01', 'ok', 1)")
            for i, holder in enumerate(["live/1/a", "stale/2/b", "me/3/c", None, "never/4/d"]):
                store.conn.execute("INSERT INTO sends (campaign, step, step_id, customer_key, status, message_id, "
                                   "queued_at, email, attempts, kind, holder) VALUES ('p', ?, ?, 'k', 'sending', ?, "
                                   "'2026-12-01', 'k@e.com', 1, 'campaign_step', ?)",
                                   (i, str(i), f"<m{i}@e.com>", holder))
        # Before the reap the stale worker still counts as running: its row is left too.
        assert [s.message_id for s in store.stuck_sends("me/3/c")] == ["<m2@e.com>", "<m3@e.com>", "<m4@e.com>"]
        assert reap(store, NOW, MINUTE, me="me/3/c") == ["stale/2/b"]
        assert [s.message_id for s in store.stuck_sends("me/3/c")] == [
            "<m1@e.com>", "<m2@e.com>", "<m3@e.com>", "<m4@e.com>"]
        assert all(s.status is SendStatus.SENDING for s in store.stuck_sends("me/3/c"))
        assert store.beat("stale/2/b", NOW, None) is False  # a worker taken for dead learns it at its next beat
        workers = {w.id: w for w in store.workers(stopped_since=NOW - MINUTE)}
        assert workers["live/1/a"].stage == "send" and workers["live/1/a"].claimed == 1
        assert workers["stale/2/b"].stopped_at == NOW
        assert [w.id for w in store.workers()] == ["live/1/a", "me/3/c"]  # without stopped_since: running only
        assert store.stop_workers(["me/3/c", "stale/2/b"], NOW) == ["me/3/c"]  # already stopped: unchanged
        assert store.forget_workers(NOW + timedelta(seconds=1)) == 2  # the stopped ones' rows go, in time
        assert [w.id for w in store.workers(stopped_since=NOW - MINUTE)] == ["live/1/a"]


def test_a_solo_worker_reaps_by_the_general_rule_only(log_location):
    store = Store.open(log_location)
    with closing(store), sessions(log_location, "other/1/a"):
        fresh = datetime.now(UTC)
        store.register_worker("other/1/a", "other", 1, fresh)  # e.g. a worker of another process, beating
        assert Solo("me/2/b").reap(store) == []
        assert [w.id for w in store.workers()] == ["other/1/a"]
        assert Solo("me/2/b", alone=True).reap(store) == ["other/1/a"]  # a SQLite log's one worker: as before


GOOD = """
[sheet]
source = "csv"
path = "c.csv"
[mailbox]
source = "maildir"
path = "inbox"
[outbound]
from = "Sales <sales@example.com>"
"""


def test_heartbeat_timeout_defaults_to_a_minute_and_takes_a_duration(tmp_path: Path):
    p = tmp_path / "config.toml"
    p.write_text(GOOD, encoding="utf-8")
    assert load_config(p).heartbeat_timeout == MINUTE
    p.write_text(GOOD + '[workspace]\nheartbeat_timeout = "2m"\n', encoding="utf-8")
    assert load_config(p).heartbeat_timeout == timedelta(minutes=2)


@pytest.mark.parametrize("value", ["1s", "soon", "0s"])
def test_a_heartbeat_timeout_too_short_or_not_a_duration_is_refused_naming_the_key(tmp_path: Path, value: str):
    p = tmp_path / "config.toml"
    p.write_text(GOOD + f'[workspace]\nheartbeat_timeout = "{value}"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"workspace\.heartbeat_timeout.*'{value}' is not a heartbeat timeout "
                                          r"\(expected an interval of at least 3s"):
        load_config(p)
