"""The one-query reads behind the stale list, the waiting list and the digests (issue #21, performance).

``store.sales_rows`` reads every customer with their contact times in one
query, and ``store.inbound_after_outbound`` asks each month's mail for our
latest email by index; :func:`crm_automation.app.sales.stale_in` and the
digests use them for 100,000 customers in well under a second. These tests
hold the earlier reads as the oracle, on a seeded log with every case mixed
in: campaign steps and the team's replies, owner notifications and digests
(not contact), ties between our mail and theirs, stage changes of the stage
field and of others, stages with and without a limit, a stage written with
spaces, owners in mixed case, customers who left the sheet, mail from
unknown senders. The module runs on both engines (issue #20): its log is
seeded, and the oracles read, through the store's own connection.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from crm_automation.app import digest, sales
from crm_automation.app.access import reading
from crm_automation.store.connection import iso, parse_iso
from crm_automation.store.contact import ContactTimes, InboundMail
from crm_automation.store.repo import Store
from crm_automation.workspace import Workspace
from tests.fixtures.core import CSV_MAPPING, make_workspace
from tests.fixtures.postgres import BACKENDS, fresh_pg_log

NOW = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)  # 10:00 in Asia/Shanghai, a Friday
STALE = CSV_MAPPING + '[stale_after_days]\nlead = 7\nquote = 3\n'
STAGES = ["lead", "quote", " quote ", "won", ""]
OWNERS = ["a@example.com", "A@Example.com", "b@example.com", ""]


def rows(n: int) -> list[dict[str, str]]:
    return [{"Email": f"c{i}@example.com", "Name": f"Customer {i}", "Stage": STAGES[i % len(STAGES)],
             "Owner": OWNERS[i % len(OWNERS)]} for i in range(n)]


def _act(key: str | None, kind: str, at: datetime, *, mid: str | None = None, details: object = None,
         campaign: str | None = None) -> tuple[object, ...]:
    return (key, kind, iso(at), "subject", "body", mid, None, campaign, None, "test",
            json.dumps(details) if details is not None else None, iso(at), None)


@contextlib.contextmanager
def log(w: Workspace) -> Iterator[Store]:
    """The workspace's log, writable, on its engine: the test's own writes and the oracles' reads."""
    store = Store.open(w.cfg.database)
    try:
        yield store
    finally:
        store.close()


def seed(w: Workspace, keys: list[str]) -> None:
    """A month of history in plain SQL, every case of the module docstring."""
    rng = random.Random(21)
    acts, sends = [], []
    for n, key in enumerate(keys):
        def t() -> datetime:
            return NOW - timedelta(minutes=rng.randrange(1, 40 * 24 * 60))

        for j in range(rng.randrange(0, 3)):
            acts.append(_act(key, "email_in", t(), mid=f"<in{n}.{j}@x>"))
        for j in range(rng.randrange(0, 3)):
            status = rng.choice(["sent", "sent", "failed", "queued"])
            when = t()
            sends.append(("welcome", j, f"s{j}", key, status, f"<out{n}.{j}@x>", iso(when),
                          iso(when) if status == "sent" else None, key, 1, None, None, "campaign_step"))
        if rng.random() < 0.3:  # an owner notification about this customer: never contact
            when = t()
            sends.append(("owner-notify", 0, str(n), key, "sent", f"<note{n}@x>", iso(when), iso(when),
                          "a@example.com", 1, None, None, "owner_notification"))
        if rng.random() < 0.3:
            acts.append(_act(key, "reply_out", t(), mid=f"<team{n}@x>",
                             details={"to": [key], "answers": [f"<in{n}.0@x>"], "folder": "Sent", "uid": n}))
        if rng.random() < 0.1:  # our reply and their mail at the same second: the customer's (the rule's tie)
            when = t()
            acts.append(_act(key, "email_in", when, mid=f"<tie{n}@x>"))
            acts.append(_act(key, "reply_out", when, mid=f"<tieout{n}@x>",
                             details={"to": [key], "answers": [], "folder": "Sent", "uid": 10_000 + n}))
        for _ in range(rng.randrange(0, 3)):
            field = rng.choice(["stage", "stage", "name"])
            acts.append(_act(key, "field_changed", t(), details={"field": field, "old": "x", "new": "y"}))
        if rng.random() < 0.2:
            acts.append(_act(key, "auto_reply", t(), mid=f"<ooo{n}@x>"))
    acts.append(_act(None, "email_in", NOW - timedelta(days=2), mid="<stranger@x>"))
    acts.append(_act(None, "reply_out", NOW - timedelta(days=1), mid="<team-stranger@x>",
                     details={"to": ["someone@else"], "answers": ["<in1.0@x>"], "folder": "Sent", "uid": 99_999}))
    with log(w) as store, store.transaction():
        store.conn.executemany("INSERT INTO activities (customer_key, kind, occurred_at, subject, body, message_id, "
                               "in_reply_to, campaign, step, source, details, logged_at, digest) "
                               "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", acts)
        store.conn.executemany("INSERT INTO sends (campaign, step, step_id, customer_key, status, message_id, "
                               "queued_at, sent_at, email, attempts, next_attempt_at, error, kind) "
                               "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", sends)
        store.conn.execute("UPDATE customers SET present = 0 WHERE key IN ('c3@example.com', 'c4@example.com')")


@pytest.fixture(scope="module", params=BACKENDS)
def ws(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """The seeded workspace, once on a SQLite file and once on a PostgreSQL database (issue #20)."""
    from crm_automation.cli import main

    with contextlib.ExitStack() as stack:
        database = "var/crm.sqlite"
        if request.param == "postgresql":
            database = stack.enter_context(fresh_pg_log(request.getfixturevalue("postgres"),
                                                        request.getfixturevalue("pg_log_template")))
        cfg = make_workspace(tmp_path_factory.mktemp("sales") / "ws", rows=rows(120), mapping=STALE,
                             database=database)
        with pytest.raises(SystemExit) as done:
            main(["--config", str(cfg), "--now", iso(NOW - timedelta(days=45)), "-q", "sync"])
        assert done.value.code == 0
        workspace = Workspace.load(cfg)
        seed(workspace, [f"c{i}@example.com" for i in range(120)])
        yield workspace


def oracle_stale(w: Workspace, store: object, now: datetime, owner: str | None) -> list[sales.CustomerContact]:
    """The stale list as it was read before: every customer, the three grouped reads, the same rule."""
    times = store.contact_times(w.mapping.roles.stage)  # type: ignore[attr-defined]
    out = []
    for c in store.customers().values():  # type: ignore[attr-defined]
        value = c.data.get("owner")
        if owner is not None and (not value or value.strip().lower() != owner.strip().lower()):
            continue
        cc = sales.customer_contact(w, c, times.get(c.key, ContactTimes()), now)
        if cc.stale:
            out.append(cc)
    out.sort(key=lambda c: (c.quiet.since, c.key))
    return out


@pytest.mark.parametrize("owner", [None, "a@example.com", "B@example.com", "nobody@example.com"])
def test_the_stale_list_is_the_one_every_customer_read_gave(ws: Workspace, owner: str | None) -> None:
    with reading(ws) as store:
        fast = sales.stale_in(ws, store, NOW, owner)
        slow = oracle_stale(ws, store, NOW, owner)
    assert [c.to_json() for c in fast.customers] == [c.to_json() for c in slow]
    if owner in (None, "a@example.com"):
        assert fast.customers, "the seeded log must have stale customers, or this compares nothing"
        assert {c.stage for c in fast.customers} >= {"lead", "quote"}  # " quote " is the quote stage too


def test_sales_rows_reads_every_present_customer_with_their_times(ws: Workspace) -> None:
    with reading(ws) as store:
        got = {r[0]: r for r in store.sales_rows("name", "stage", "owner")}
        untimed = store.sales_rows("name", "stage", "owner", timed=False)
        times = store.contact_times("stage")
        present = store.customers()
    assert set(got) == set(present) and "c3@example.com" not in got
    with log(ws) as store:
        arrival = [k for (k,) in store.conn.execute(
            f"SELECT key FROM customers WHERE present = 1 ORDER BY {store.dialect.rowid}")]
    assert [r[0] for r in untimed] == arrival  # the sheet's order of arrival
    assert all(r[5:] == (None, None, None, None) for r in untimed)
    for key, (_, name, stage, owner, first, last_in, sent, replied, changed) in got.items():
        c = present[key]
        assert (name, stage, owner) == (c.data.get("name"), c.data.get("stage"), c.data.get("owner"))
        assert parse_iso(first) == c.first_seen
        want = times.get(key, ContactTimes())
        out = max(x for x in (sent, replied) if x) if sent or replied else None
        assert (parse_iso(last_in), parse_iso(out), parse_iso(changed)) == (
            want.last_in, want.last_out, want.stage_changed), key


_OLD_WAITING_SQL = (  # {answers}: the reply's ``answers`` as rows, in the engine's dialect
    "WITH last_out AS (SELECT customer_key, MAX(t) AS t FROM ("
    "SELECT customer_key, MAX(sent_at) AS t FROM sends WHERE status = 'sent' AND kind = 'campaign_step' "
    "GROUP BY customer_key UNION ALL SELECT customer_key, MAX(occurred_at) FROM activities "
    "WHERE kind = 'reply_out' AND customer_key IS NOT NULL GROUP BY customer_key) AS u GROUP BY customer_key), "
    "named AS (SELECT DISTINCT j.value AS mid FROM activities r, {answers} "
    "WHERE r.kind = 'reply_out') "
    "SELECT a.id, a.customer_key, a.occurred_at, a.subject, a.message_id, "
    "a.message_id IN (SELECT mid FROM named), o.t FROM activities a "
    "LEFT JOIN last_out o ON o.customer_key = a.customer_key "
    "WHERE a.kind = 'email_in' AND a.customer_key IS NOT NULL AND a.occurred_at >= ? "
    "AND (o.t IS NULL OR a.occurred_at >= o.t) ORDER BY a.occurred_at, a.id")


@pytest.mark.parametrize("days", [1, 30, 60])
def test_mail_after_our_latest_email_is_what_the_grouped_read_gave(ws: Workspace, days: int) -> None:
    since = NOW - timedelta(days=days)
    with reading(ws) as store:
        got = store.inbound_after_outbound(since)
    with log(ws) as store:
        sql = _OLD_WAITING_SQL.format(answers=store.dialect.json_array("r.details", "j", "answers"))
        want = [InboundMail(i, k, parse_iso(at) or since, s, mid, bool(named), parse_iso(out))
                for i, k, at, s, mid, named, out in store.conn.execute(sql, (iso(since),))]
    assert got == want
    if days == 30:
        assert any(m.named_by_reply for m in got) or any(m.last_out for m in got)


def test_a_digest_counts_follow_ups_past_fifty_without_showing_them(ws: Workspace) -> None:
    """Follow-ups sent today are listed 50 to a digest; the rest are counted in ``more``, as before."""
    today = NOW - timedelta(hours=1)
    keys = [f"c{i}@example.com" for i in range(120) if i % len(OWNERS) == 2 and i not in (3, 4)]  # b@example.com's
    midnight = iso(datetime(2026, 11, 19, 16, 0, tzinfo=UTC))  # local midnight of NOW's day
    with log(ws) as store:
        with store.transaction():
            store.conn.executemany(
                "INSERT INTO sends (campaign, step, step_id, customer_key, status, message_id, queued_at, sent_at, "
                "email, attempts, kind) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(f"drip{j}", 1, None if j == 0 else "follow", k, "sent", f"<drip{j}.{k}>", iso(today), iso(today),
                  k, 1, "campaign_step") for j in range(3) for k in keys])
        (expected,) = store.conn.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT customer_key, campaign, COALESCE(step_id, CAST(step AS TEXT)) "
            "FROM sends WHERE kind = 'campaign_step' AND step > 0 AND (status = 'queued' OR (status = 'sent' AND "
            f"sent_at >= ?)) AND customer_key IN ({','.join('?' * len(keys))})) AS d", (midnight, *keys)).fetchone()
    try:
        with reading(ws) as store:
            book = digest.digests_in(ws, store, NOW, {"b@example.com": NOW})
        d = book.digests["b@example.com"]
        assert expected >= len(keys) * 3 > digest.MAX_ITEMS
        assert len(d.due) == digest.MAX_ITEMS and d.more["due"] == expected - digest.MAX_ITEMS
        assert {f.status for f in d.due} == {"sent"} and d.due[0].customer.name is not None
        assert d.due[0].step == "1"  # a row from before step keys: the step's place
    finally:
        with log(ws) as store, store.transaction():
            store.conn.execute("DELETE FROM sends WHERE campaign LIKE 'drip%'")


def test_each_mail_of_the_month_comes_with_our_first_email_after_it(ws: Workspace) -> None:
    """``report pipeline``'s first responses: our first campaign step sent, and first reply, after each mail."""
    start, end = NOW - timedelta(days=30), NOW - timedelta(days=2)  # an end before some of our emails
    with log(ws) as store:
        ours: dict[str, list[tuple[str, str]]] = {}
        for key, at, what in store.conn.execute(
                "SELECT customer_key, sent_at, 'sent' FROM sends WHERE status = 'sent' AND kind = 'campaign_step' "
                "UNION ALL SELECT customer_key, occurred_at, 'reply' FROM activities WHERE kind = 'reply_out' "
                "AND customer_key IS NOT NULL"):
            ours.setdefault(key, []).append((at, what))
        want = []
        for i, key, at, mid in store.conn.execute(
                "SELECT id, customer_key, occurred_at, message_id FROM activities WHERE kind = 'email_in' "
                "AND customer_key IS NOT NULL AND occurred_at >= ? AND occurred_at <= ? ORDER BY id",
                (iso(start), iso(end))):
            later = sorted((t, w) for t, w in ours.get(key, []) if iso(end) >= t > at)
            first = {w: min((t for t, x in later if x == w), default=None) for w in ("sent", "reply")}
            want.append((i, key, at, mid, first["sent"], first["reply"]))
    with reading(ws) as store:
        got = sorted(store.customer_mail_between(start, end))
    assert got == want
    assert any(r[4] for r in got) and any(r[5] for r in got) and any(not (r[4] or r[5]) for r in got)


def test_the_stage_moves_of_a_period_are_read_by_time(ws: Workspace) -> None:
    """Schema 11: ``--since`` reads the period's changes of the stage field by (field, time), not every change.

    On PostgreSQL the planner would scan a table this small: sequential scans
    are turned off to see that the query's expression matches the index's.
    """
    seen: list[str] = []
    start = NOW - timedelta(days=10)
    with reading(ws) as store:
        sqlite = store.dialect.name == "sqlite"
        if sqlite:
            store.conn._c.set_trace_callback(seen.append)
        else:
            store.conn.trace = seen.append
        moves = store.stage_moves_between("stage", start, NOW)
        (sql,) = [s for s in seen if "field_changed" in s]
        if not sqlite:
            store.conn.execute("SET enable_seqscan = off")
        # SQLite's trace gives the statement with its values in place; the store's hook, the text and its ``?``
        explain = f"EXPLAIN QUERY PLAN {sql}" if sqlite else f"EXPLAIN {sql}"
        args = () if sqlite else ("stage", iso(start), iso(NOW))
        plan = " ".join(str(r) for r in store.conn.execute(explain, args))
    assert moves and "idx_activities_field_changed_at" in plan, plan
