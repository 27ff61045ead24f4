"""The dashboard's reads (issue #19): the funnel's ``clicked``, the per-day charts, a page of the suppression list.

The log is a real SQLite file, then a PostgreSQL database (issue #20), written through the store's own write paths
(queue, mark sending, mark sent, add activity, suppress); the funnel's
rewrite (three queries instead of three per step) is checked against the
per-step query it replaced, on a log with every case that query decided.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from crm_automation.app import reports, suppressions
from crm_automation.errors import ConfigError
from crm_automation.models import SendStatus, SuppressionReason
from crm_automation.store.repo import Store
from crm_automation.store.schema import permanence_sql
from crm_automation.workspace import Workspace
from tests.fixtures.core import make_workspace

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)  # 10:00 in Asia/Shanghai (the test workspace's time zone)


@pytest.fixture
def ws(tmp_path: Path, log_location: str) -> Workspace:
    """An empty CSV workspace (time zone Asia/Shanghai); its log is created by the first write."""
    db = log_location if log_location.startswith("postgresql://") else "var/crm.sqlite"
    return Workspace.load(make_workspace(tmp_path / "ws", database=db))


@pytest.fixture
def store(ws: Workspace):
    s = Store.open(ws.cfg.database)
    yield s
    s.close()


def send(store: Store, campaign: str, step: int, key: str, at: datetime, *, status: SendStatus = SendStatus.SENT) -> int:
    """One send through the send pass's own writes: queued, then sending and sent (or left in ``status``)."""
    store.queue_sends([{"campaign": campaign, "step": step, "step_id": f"{campaign}-{step}", "customer_key": key,
                        "status": "queued", "message_id": None, "queued_at": "2026-11-01T00:00:00Z", "error": None,
                        "email": key}])
    sid = next(s.id for s in store.sends(campaign=campaign) if s.customer_key == key and s.step == step)
    if status is SendStatus.QUEUED:
        return sid
    mid = f"<{campaign}.{step}.{key}>"
    store.claim_sends("w", at, 100)  # the send pass claims first (issue #20)
    assert store.mark_sending(sid, mid, at, "w")
    if status is SendStatus.SENT:
        store.mark_sent(sid, at, customer_key=key, campaign=campaign, step=step, message_id=mid, subject="Hi",
                        body="text", source="outbox")
    else:
        store.mark_status(sid, status, "550 no such user" if status is SendStatus.FAILED else "lost after DATA")
    return sid


def event(store: Store, kind: str, key: str | None, at: datetime, *, campaign: str | None = None,
          step: int | None = None, details: dict[str, object] | None = None) -> None:
    """An activity logged at ``at`` (when the worker learnt of it; it happened a minute before)."""
    store.add_activity(kind=kind, occurred_at=at - timedelta(minutes=1), now=at, customer_key=key, campaign=campaign,
                       step=step, source="test", details=details or {})


def bounce(store: Store, key: str, at: datetime, permanence: str, campaign: str | None = None) -> None:
    event(store, "bounce", key, at, campaign=campaign, step=0 if campaign else None,
          details={"recipient": key, "permanence": permanence})


def click(store: Store, key: str, at: datetime, campaign: str, step: int, send_id: int) -> None:
    """A tracked link's click, as the click endpoint logs it: against the send's campaign and step."""
    event(store, "click", key, at, campaign=campaign, step=step, details={"send_id": send_id, "link": 0})


# ---------------------------------------------------------------- the funnel

# The funnel's "after the send" columns as they were computed before issue #19: one query per step and column.
def _bounced(store: Store) -> str:
    permanence = permanence_sql(store.dialect)  # the engine's spelling (SQLite's is PERMANENCE_SQL)
    return (f"a.kind = 'bounce' AND {permanence} != 'delayed' AND ({permanence} = 'hard' OR "
            "a.campaign IS NULL OR a.campaign = s.campaign)")


def per_step_reference(store: Store) -> dict[tuple[str, int], tuple[int, int, int]]:
    out = {}
    for c, s in store.conn.execute("SELECT DISTINCT campaign, step FROM sends").fetchall():
        out[(c, s)] = tuple(store.conn.execute(
            "SELECT COUNT(DISTINCT s.customer_key) FROM sends s JOIN activities a ON a.customer_key = s.customer_key "
            f"WHERE s.campaign = ? AND s.step = ? AND s.status = 'sent' AND {cond} "
            "AND COALESCE(a.logged_at, a.occurred_at) > s.sent_at", (c, s)).fetchone()[0]
            for cond in (_bounced(store), "a.kind = 'email_in'", "a.kind = 'unsubscribe'"))
    return out


def test_funnel_counts_what_the_per_step_queries_counted(store):
    """Every case the old queries decided, each on its own customer; the numbers must not move."""
    t = T0
    for k in "abcdefghijkl":
        send(store, "spring", 0, f"{k}@x.com", t)
    for k in "abcdef":
        send(store, "spring", 1, f"{k}@x.com", t + timedelta(days=3))
    for k in "ghij":
        send(store, "quote", 0, f"{k}@x.com", t + timedelta(days=1))
    send(store, "quote", 0, "k@x.com", t, status=SendStatus.FAILED)
    send(store, "quote", 0, "l@x.com", t, status=SendStatus.QUEUED)
    later = t + timedelta(days=5)
    event(store, "email_in", "a@x.com", t + timedelta(days=1))  # after spring/0 only
    event(store, "email_in", "a@x.com", t + timedelta(days=2))  # a second reply: one customer
    event(store, "email_in", "b@x.com", later)  # after both spring steps
    event(store, "email_in", "c@x.com", t - timedelta(days=1))  # before any send: not counted
    event(store, "email_in", None, later)  # an unknown sender
    event(store, "auto_reply", "d@x.com", later)  # never a reply
    event(store, "unsubscribe", "e@x.com", later)
    bounce(store, "f@x.com", later, "hard", campaign="quote")  # hard: counts for every campaign
    bounce(store, "g@x.com", later, "soft", campaign="quote")  # soft: for its own campaign only
    bounce(store, "h@x.com", later, "soft")  # soft of no known campaign: for every campaign
    bounce(store, "i@x.com", later, "delayed")  # a delay warning is no bounce
    bounce(store, "j@x.com", t + timedelta(hours=12), "soft", campaign="quote")  # before its quote send
    store.add_activity(kind="bounce", occurred_at=later, now=later, customer_key="k@x.com", source="old",
                       details={"permanent": True})  # logged before issue #11: hard
    rows = {(r.campaign, r.step): r for r in store.funnel()}
    assert {k: (r.bounced, r.replied, r.unsubscribed) for k, r in rows.items()} == per_step_reference(store)
    assert (rows["spring", 0].replied, rows["spring", 1].replied) == (2, 1)
    assert (rows["spring", 0].bounced, rows["quote", 0].bounced) == (3, 2)  # f, h, k; g, h
    assert rows["quote", 0].sent == 4 and rows["quote", 0].failed == 1 and rows["quote", 0].queued == 1
    assert rows["spring", 0].reply_rate == round(2 / 12, 4)


def expected_follow_ups(store: Store) -> dict[int, tuple[int, int, int]]:
    """Per send (replied, bounced, unsubscribed), worked out in Python from the rows, as the funnel defines them."""
    acts = store.conn.execute("SELECT customer_key, kind, COALESCE(logged_at, occurred_at), campaign, details "
                              "FROM activities WHERE customer_key IS NOT NULL").fetchall()
    out = {}
    for sid, key, campaign, status, sent_at in store.conn.execute(
            "SELECT id, customer_key, campaign, status, sent_at FROM sends").fetchall():
        after = [(kind, c, json.loads(d or "{}")) for k, kind, t, c, d in acts
                 if k == key and status == "sent" and sent_at is not None and t > sent_at]
        perm = [d.get("permanence") or ("hard" if d.get("permanent") else "delayed")
                for kind, c, d in after if kind == "bounce" and (c is None or c == campaign or
                                                               (d.get("permanence") or "") == "hard"
                                                               or d.get("permanent"))]
        out[sid] = (int(any(kind == "email_in" for kind, _, _ in after)),
                    int(any(p != "delayed" for p in perm)),
                    int(any(kind == "unsubscribe" for kind, _, _ in after)))
    return out


def stored_follow_ups(store: Store) -> dict[int, tuple[int, int, int]]:
    return {sid: (r, b, u) for sid, r, b, u in store.conn.execute(
        "SELECT id, replied, bounced, unsubscribed FROM sends").fetchall()}


def test_each_sends_follow_ups_stay_what_the_log_says_through_every_write(store):
    """Schema 10 keeps "a reply / bounce / unsubscribe followed this send" per send; every write path keeps it true.

    Checked after each step against the rows themselves: events recorded,
    a message becoming sent after an event, an unknown sender linked to a
    customer, a re-key (with a swap), a campaign rename, a row edited and
    one deleted and a sent one added by hand, a send leaving ``sent``.
    """
    t = T0

    def check() -> None:
        assert stored_follow_ups(store) == expected_follow_ups(store)
        rows = {(r.campaign, r.step): r for r in store.funnel()}
        assert {k: (r.bounced, r.replied, r.unsubscribed) for k, r in rows.items()} == per_step_reference(store)

    a0 = send(store, "spring", 0, "a@x.com", t)
    send(store, "spring", 0, "b@x.com", t)
    send(store, "quote", 0, "a@x.com", t + timedelta(days=1))
    send(store, "spring", 0, "m@x.com", t)
    check()
    event(store, "email_in", "a@x.com", t + timedelta(hours=5))  # after spring/0, before quote/0
    bounce(store, "b@x.com", t + timedelta(hours=5), "soft", campaign="quote")  # not spring's
    event(store, "unsubscribe", "b@x.com", t + timedelta(days=2))
    check()
    assert stored_follow_ups(store)[a0] == (1, 0, 0)
    late = send(store, "spring", 1, "b@x.com", t + timedelta(days=3))  # sent after b's events: none follow it
    pending = send(store, "quote", 0, "b@x.com", t, status=SendStatus.QUEUED)
    check()
    store.claim_sends("w", t + timedelta(hours=1), 100)
    store.mark_sending(pending, "<q.b>", t + timedelta(hours=1), "w")
    store.mark_sent(pending, t + timedelta(hours=1), customer_key="b@x.com", campaign="quote", step=0,
                    message_id="<q.b>", subject="Hi", body="text", source="outbox")  # now the soft bounce is after it
    check()
    assert stored_follow_ups(store)[pending] == (0, 1, 1) and stored_follow_ups(store)[late] == (0, 0, 0)
    event(store, "email_in", None, t + timedelta(days=4), details={"from": "m@x.com"})  # an unknown sender...
    check()
    assert store.relink_inbound({"m@x.com": "m@x.com"}, t + timedelta(days=5), status_of=lambda _r: None) == 1
    check()  # ...linked to the customer: a reply after m's message
    store.rekey([("a@x.com", "b@x.com", "b@x.com"), ("b@x.com", "a@x.com", "a@x.com")], "email")  # a swap
    check()
    store.record_campaign_edits({}, [("quote", "offer")], [], t + timedelta(days=6))
    check()
    with store.transaction():  # by hand: a reply now logged before every send, an unsubscribe gone
        store.conn.execute("UPDATE activities SET logged_at = ? WHERE kind = 'email_in' "
                           "AND customer_key = 'm@x.com'", ("2026-01-01T00:00:00Z",))
        store.conn.execute("DELETE FROM activities WHERE kind = 'unsubscribe'")
        store.conn.execute("INSERT INTO sends (campaign, step, step_id, customer_key, status, sent_at) "
                           "VALUES ('spring', 2, 'spring-2', 'b@x.com', 'sent', ?)", ("2026-11-19T00:00:00Z",))
    check()
    assert max(stored_follow_ups(store).items())[1] == (1, 0, 0)  # added by hand: a's reply, now b's (swap)
    with store.transaction():
        store.conn.execute("UPDATE sends SET status = 'uncertain' WHERE id = ?", (a0,))
    check()
    assert stored_follow_ups(store)[a0] == (0, 0, 0)


def test_clicked_counts_customers_who_clicked_that_steps_message(store):
    ids = {k: send(store, "spring", 0, f"{k}@x.com", T0) for k in "abc"}
    step1 = send(store, "spring", 1, "a@x.com", T0 + timedelta(days=3))
    send(store, "quote", 0, "a@x.com", T0)
    click(store, "a@x.com", T0 + timedelta(hours=1), "spring", 0, ids["a"])
    click(store, "a@x.com", T0 + timedelta(hours=2), "spring", 0, ids["a"])  # a second link: still one customer
    click(store, "b@x.com", T0 + timedelta(hours=1), "spring", 0, ids["b"])
    click(store, "a@x.com", T0 + timedelta(days=4), "spring", 1, step1)
    rows = {(r.campaign, r.step): r for r in store.funnel()}
    assert (rows["spring", 0].clicked, rows["spring", 1].clicked, rows["quote", 0].clicked) == (2, 1, 0)
    assert (rows["spring", 0].replied, rows["spring", 0].sent) == (0, 3)  # a click is no reply


def test_report_json_gains_clicked_after_the_fields_it_had(ws, store):
    sid = send(store, "spring", 0, "a@x.com", T0)
    click(store, "a@x.com", T0 + timedelta(hours=1), "spring", 0, sid)
    data = json.loads(json.dumps(reports.report(ws, T0 + timedelta(days=1)).to_json()))
    (row,) = data["campaigns"]
    assert list(row) == ["campaign", "step", "queued", "sending", "sent", "failed", "uncertain", "skipped",
                         "bounced", "replied", "unsubscribed", "reply_rate", "clicked"]
    assert (row["sent"], row["clicked"]) == (1, 1)


# ---------------------------------------------------------------- the charts


def test_daily_counts_per_local_day_of_the_workspace(ws, store):
    # 15:59 UTC is 23:59 in Shanghai, 16:01 UTC is 00:01 the next day: one UTC day, two local days.
    late, early = datetime(2026, 11, 20, 15, 59, tzinfo=UTC), datetime(2026, 11, 20, 16, 1, tzinfo=UTC)
    a = send(store, "spring", 0, "a@x.com", late)
    send(store, "spring", 0, "b@x.com", early)
    send(store, "quote", 0, "c@x.com", early)
    send(store, "quote", 1, "c@x.com", early, status=SendStatus.FAILED)  # not sent: not counted
    event(store, "email_in", "a@x.com", early + timedelta(hours=1))
    event(store, "email_in", None, early + timedelta(hours=1))  # an enquiry from a new sender: no reply
    event(store, "auto_reply", "b@x.com", early + timedelta(hours=1))
    bounce(store, "b@x.com", early + timedelta(hours=2), "hard", campaign="spring")
    bounce(store, "c@x.com", early + timedelta(hours=2), "delayed", campaign="quote")  # a delay: not a bounce
    event(store, "unsubscribe", "c@x.com", early + timedelta(hours=3))
    click(store, "a@x.com", late + timedelta(minutes=1), "spring", 0, a)  # 00:00 local: the next day
    result = reports.daily(ws, datetime(2026, 11, 21, 4, 0, tzinfo=UTC), days=3)
    assert [d.day for d in result.days] == [date(2026, 11, 19), date(2026, 11, 20), date(2026, 11, 21)]
    got = [(d.counts.sent, d.counts.replied, d.counts.bounced, d.counts.unsubscribed, d.counts.clicked)
           for d in result.days]
    assert got == [(0, 0, 0, 0, 0), (1, 0, 0, 0, 0), (2, 1, 1, 1, 1)]
    data = json.loads(json.dumps(result.to_json()))
    assert data["campaign"] is None and data["timezone"] == "Asia/Shanghai"
    assert data["days"][2] == {"date": "2026-11-21", "start": "2026-11-20T16:00:00Z", "sent": 2, "replied": 1,
                               "bounced": 1, "unsubscribed": 1, "clicked": 1}


def test_daily_for_one_campaign_counts_its_messages_and_what_followed_them(ws, store):
    day = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    sid = send(store, "spring", 0, "a@x.com", day)
    send(store, "quote", 0, "b@x.com", day)
    event(store, "email_in", "a@x.com", day + timedelta(hours=1))  # matched by sender, after spring: spring's
    event(store, "email_in", "b@x.com", day + timedelta(hours=1))  # after quote only
    event(store, "email_in", "c@x.com", day + timedelta(hours=1))  # never mailed
    bounce(store, "b@x.com", day + timedelta(hours=2), "hard", campaign="quote")
    click(store, "a@x.com", day + timedelta(hours=3), "spring", 0, sid)
    now = day + timedelta(hours=5)
    (spring,) = reports.daily(ws, now, days=1, campaign="spring").days
    (quote,) = reports.daily(ws, now, days=1, campaign="quote").days
    (every,) = reports.daily(ws, now, days=1).days
    c = spring.counts
    assert (c.sent, c.replied, c.bounced, c.unsubscribed, c.clicked) == (1, 1, 0, 0, 1)
    c = quote.counts
    assert (c.sent, c.replied, c.bounced, c.unsubscribed, c.clicked) == (1, 1, 1, 0, 0)
    c = every.counts
    assert (c.sent, c.replied, c.bounced, c.clicked) == (2, 3, 1, 1)
    assert reports.daily(ws, now, days=1, campaign="nosuch").days[0].counts.sent == 0


def test_daily_on_a_log_not_created_yet_is_all_zero_and_creates_nothing(tmp_path):
    ws = Workspace.load(make_workspace(tmp_path / "ws"))  # SQLite's: "not created yet" is a file not made
    result = reports.daily(ws, T0, days=30)
    assert len(result.days) == 30 and result.days[-1].day == date(2026, 11, 20)
    assert all(d.counts.sent == d.counts.replied == d.counts.clicked == 0 for d in result.days)
    assert not ws.cfg.database.exists()


@pytest.mark.parametrize("days", [0, -1, 367])
def test_daily_refuses_a_number_of_days_out_of_range(ws, days):
    with pytest.raises(ConfigError, match=rf"{days} days is out of range \(expected 1 to 366\)"):
        reports.daily(ws, T0, days=days)


# ---------------------------------------------------------------- the suppression list, a page at a time


def test_suppression_list_by_pages_in_the_whole_lists_order(ws, store):
    for i in range(5):
        store.suppress(f"s{i}@x.com", SuppressionReason.MANUAL, "cli", T0 + timedelta(minutes=i % 3))
    whole = [s.email for s in suppressions.suppressions(ws).items]
    pages = [suppressions.suppressions(ws, limit=2, offset=o) for o in (0, 2, 4, 6)]
    assert [e for p in pages for e in (s.email for s in p.items)] == whole
    assert [len(p.items) for p in pages] == [2, 2, 1, 0]
    assert pages[1].to_json()["total"] == 5 and pages[1].to_json()["offset"] == 2
    assert "total" not in suppressions.suppressions(ws).to_json()  # `suppress list --json` as before


@pytest.mark.parametrize(("limit", "offset"), [(0, 0), (10, -1)])
def test_suppression_page_refuses_a_page_that_is_none(ws, limit, offset):
    with pytest.raises(ConfigError, match="is not a page"):
        suppressions.suppressions(ws, limit=limit, offset=offset)


# ---------------------------------------------------------------- the dashboard's one use case


def test_the_dashboard_is_the_funnel_report_shows_and_the_daily_series(ws, store):
    a = send(store, "spring", 0, "a@x.com", T0 - timedelta(days=2))
    send(store, "spring", 0, "b@x.com", T0 - timedelta(days=1))
    send(store, "quote", 0, "c@x.com", T0, status=SendStatus.FAILED)
    event(store, "email_in", "a@x.com", T0 - timedelta(days=1, hours=1))
    bounce(store, "b@x.com", T0, "hard", campaign="spring")
    click(store, "a@x.com", T0 - timedelta(days=2) + timedelta(hours=1), "spring", 0, a)
    now = T0 + timedelta(hours=1)
    result = reports.dashboard(ws, now)
    assert result.funnel == reports.funnel(ws)
    assert result.daily == reports.daily(ws, now)
    data = json.loads(json.dumps(result.to_json()))
    assert data["campaigns"] == reports.report(ws, now).to_json()["campaigns"]
    assert data["daily"] == reports.daily(ws, now).to_json() and len(data["daily"]["days"]) == 30
    spring = next(r for r in data["campaigns"] if r["campaign"] == "spring")
    assert (spring["sent"], spring["replied"], spring["bounced"], spring["clicked"]) == (2, 1, 1, 1)
    assert [d["sent"] for d in data["daily"]["days"][-3:]] == [1, 1, 0]


def test_the_dashboard_on_a_log_not_created_yet_is_empty_and_creates_nothing(ws):
    result = reports.dashboard(ws, T0)
    assert result.funnel.rows == () and len(result.daily.days) == 30
    assert all(d.counts.sent == 0 for d in result.daily.days)
    assert not Path(ws.cfg.database).exists()
    with pytest.raises(ConfigError, match="400 days is out of range"):
        reports.dashboard(ws, T0, days=400)
