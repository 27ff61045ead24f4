"""The log's parts on their own: the send lifecycle, the transaction rule, and typed results (issue #10).

The rule (store/__init__.py): every public method that writes is atomic on
its own; inside a caller's ``transaction()`` it nests as a savepoint and
adds no commit. Commits are counted through SQLite's statement trace.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from crm_automation.mailbox.base import Cursor
from crm_automation.models import (
    ActivityRecord,
    Classification,
    Customer,
    CustomerAddedDetails,
    Decision,
    EmailStatus,
    InboundDetails,
    Kind,
    NoDetails,
    Permanence,
    QuarantineRecord,
    Reading,
    SendFailedDetails,
    SendStatus,
    SuppressionReason,
)
from crm_automation.store.repo import FunnelRow, SendKind, SentRef, SheetState, Store, Suppression

T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def rec(mid: str, *, key: str | None = None, subject: str = "hi", source: str = "maildir", digest: str,
        details: InboundDetails | None = None, **kw) -> ActivityRecord:
    """An inbound activity of a message with this Message-ID, subject and the text "ok", read at T0."""
    msg = Reading(mid, "", "", (), subject, None, None, (), "ok", Classification(Kind.EMAIL_IN, ""), digest)
    return ActivityRecord(kind=Kind.EMAIL_IN, customer_key=key, message=msg, occurred_at=T0, source=source,
                          details=details or InboundDetails("", (), "", None), digest=digest, **kw)


@pytest.fixture
def store(log_location):  # each test runs on SQLite, then on PostgreSQL (tests/fixtures/postgres.py)
    s = Store.open(log_location)
    yield s
    s.close()


def statements(store: Store) -> list[str]:
    seen: list[str] = []
    if store.dialect.name == "sqlite":
        store.conn.raw.set_trace_callback(seen.append)
    else:
        store.conn.trace = seen.append  # psycopg has no trace hook: the store's PostgreSQL guard offers one
    return seen


def read_elsewhere(store: Store, sql: str) -> tuple:
    """One row as another connection sees it (what is committed)."""
    if store.dialect.name == "sqlite":
        other = sqlite3.connect(store.path)
        try:
            return other.execute(sql).fetchone()
        finally:
            other.close()
    with psycopg.connect(store.conn.raw.info.dsn, autocommit=True) as other:
        return other.execute(sql.encode()).fetchone()


ME = "host/1/me"  # the worker that claims (issue #20): mark_sending takes only a send it claimed


def claim(store: Store, now: datetime = T0) -> None:
    store.claim_sends(ME, now, 100)


def commits(seen: list[str]) -> int:
    return sum(s == "COMMIT" for s in seen)


def queue(store: Store, key: str = "a@x.com", step: int = 0, mid: str | None = "<m1@x>") -> int:
    store.queue_sends([{"campaign": "c", "step": step, "customer_key": key, "status": "queued", "message_id": mid,
                        "queued_at": "2026-11-27T02:00:00Z", "error": None, "email": key}])
    return store.sends(campaign="c")[-1].id


# ---------------------------------------------------------------- the send lifecycle


def test_send_lifecycle_queued_sending_sent(store):
    sid = queue(store)
    (row,) = store.sends(status=[SendStatus.QUEUED])
    assert row.status is SendStatus.QUEUED and row.attempts == 0 and row.queued_at == T0
    assert not store.mark_sending(sid, "<m1@x>", T0, ME)  # not claimed yet
    claim(store)
    assert store.mark_sending(sid, "<m1@x>", T0, ME)
    assert not store.mark_sending(sid, "<m1@x>", T0, ME)  # only a queued send is marked
    assert store.sends()[0].status is SendStatus.SENDING and store.sends()[0].attempts == 1
    assert store.recent_hand_overs(None, T0).day == 1  # handed over counts for the rate limits
    store.mark_sent(sid, T0, customer_key="a@x.com", campaign="c", step=0, message_id="<m1@x>", subject="Hi",
                    body="text", source="outbox")
    row = store.sends()[0]
    assert (row.status, row.sent_at, row.error) == (SendStatus.SENT, T0, None)
    assert store.sent_count() == 1
    (act,) = store.timeline("a@x.com")
    assert (act.kind, act.campaign, act.step, act.subject, act.details) == (Kind.EMAIL_OUT, "c", 0, "Hi", NoDetails())
    assert store.sent_message_ids(["<m1@x>", "<other@x>"]) == {"<m1@x>": SentRef("a@x.com", "c", 0)}
    assert store.last_times().sent == {"a@x.com": T0}


def test_send_lifecycle_retry_failed_uncertain_requeue(store):
    a, b, c = queue(store, "a@x.com", mid="<a@x>"), queue(store, "b@x.com", mid="<b@x>"), queue(store, "c@x.com")
    claim(store)
    for sid in (a, b, c):
        assert store.mark_sending(sid, f"<{sid}@x>", T0, ME)
    store.mark_retry(a, "451 later", T0 + timedelta(minutes=5))
    store.mark_failed(b, "550 no", T0, customer_key="b@x.com", campaign="c", step=0)
    store.mark_status(c, SendStatus.UNCERTAIN, "killed")
    rows = {r.id: r for r in store.sends()}
    assert (rows[a].status, rows[a].error, rows[a].next_attempt_at) == (SendStatus.QUEUED, "451 later",
                                                                        T0 + timedelta(minutes=5))
    assert (rows[b].status, rows[b].error) == (SendStatus.FAILED, "550 no")
    assert (rows[c].status, rows[c].error) == (SendStatus.UNCERTAIN, "killed")
    assert [(x.kind, x.details) for x in store.timeline("b@x.com")] == [(Kind.SEND_FAILED, SendFailedDetails("550 no"))]
    assert store.requeue_problems([a, 999], ("uncertain", "failed")) == [
        f"send #{a} (c/0 to a@x.com) is queued, not uncertain or failed: nothing to requeue",
        "send #999 does not exist (`crm-automation report --json` lists the ids of sends that need attention)"]
    assert store.requeue(None) == 2
    assert {r.status for r in store.sends()} == {SendStatus.QUEUED}


# ---------------------------------------------------------------- who owns a transaction


def test_each_writer_commits_on_its_own(store):
    sid = queue(store)
    claim(store)
    seen = statements(store)
    store.mark_sending(sid, "<m1@x>", T0, ME)  # one statement: SQLite commits it by itself (autocommit)
    assert read_elsewhere(store, "SELECT status FROM sends") == ("sending",)
    assert commits(seen) == 0 and not store.conn.in_transaction
    store.mark_status(sid, SendStatus.UNCERTAIN, "x")
    store.suppress("a@x.com", "manual", "test", T0)
    store.set_email_status("a@x.com", "bounced")
    store.set_cursor("INBOX", 1, 5, T0)
    run = store.start_run("sync", T0)
    store.finish_run(run, T0, ok=True, stats={}, error=None)
    assert commits(seen) == 6
    assert read_elsewhere(store, "SELECT status FROM sends") == ("uncertain",)  # visible to another reader at once


def test_writers_inside_a_callers_transaction_are_savepoints_one_commit(store):
    sid, nxt = queue(store), queue(store, "b@x.com", mid="<m2@x>")
    claim(store)
    store.mark_sending(sid, "<m1@x>", T0, ME)
    seen = statements(store)
    with store.transaction():  # the send pass: the last message's "sent" rides with the next one's "sending"
        store.mark_sent(sid, T0, customer_key="a@x.com", campaign="c", step=0, message_id="<m1@x>", subject="s",
                        body="b", source="outbox")
        assert store.mark_sending(nxt, "<m2@x>", T0, ME)
    assert commits(seen) == 1
    # mark_sent (two statements) nests as a savepoint; mark_sending (one statement) needs none
    assert sum(s.startswith("SAVEPOINT") for s in seen) == 1


def test_savepoints_are_named_by_depth_so_a_long_lived_connection_repeats_its_statements(store):
    """serve keeps one write connection all day (issue #19): a running count made every SAVEPOINT a new statement
    text, each parsed afresh and pushing the store's other statements out of the driver's cache."""
    seen = statements(store)
    for n in range(50):
        with store.transaction():
            store.suppress(f"a{n}@x.com", "manual", "test", T0)  # a savepoint inside the caller's unit
            with store.transaction():
                store.suppress(f"b{n}@x.com", "manual", "test", T0)  # two deep

    def fail_two_deep() -> None:
        with store.transaction():
            store.suppress("c@x.com", "manual", "test", T0)
            with store.transaction():
                store.suppress("d@x.com", "manual", "test", T0)
                raise RuntimeError

    with pytest.raises(RuntimeError):
        fail_two_deep()
    with store.transaction():
        store.suppress("e@x.com", "manual", "test", T0)  # the depth came back down after the failure
    texts = {s for s in seen if "SAVEPOINT" in s}
    assert texts == {"SAVEPOINT sp1", "RELEASE SAVEPOINT sp1", "SAVEPOINT sp2", "RELEASE SAVEPOINT sp2",
                     "ROLLBACK TO SAVEPOINT sp1"}
    assert commits(seen) == 51
    assert sorted(store.suppressions()) == sorted([*(f"a{n}@x.com" for n in range(50)),
                                                   *(f"b{n}@x.com" for n in range(50)), "e@x.com"])


def test_an_unsubscribe_link_is_recorded_as_one_unit_and_only_once(store):
    """record_unsubscribe (issue #19): suppression, status and activity in one savepoint of the caller's unit,
    not one each; nothing at all when the address was on the list already."""
    store.apply_sync("s.csv", [Customer("a@x.com", 2, {"email": "a@x.com"})], {}, {}, T0)
    details = InboundDetails("a@x.com", (), "unsubscribe link", "token", token="crm.1", token_customer="a@x.com",
                             token_send="c/0", sender_customer="a@x.com")

    def record() -> bool:
        return store.record_unsubscribe("A@x.com ", "unsubscribe link c/0", T0, customer_key="a@x.com",
                                        campaign="c", step=0, status=EmailStatus.UNSUBSCRIBED, details=details)

    seen = statements(store)
    with store.transaction():
        assert record()
    assert sum(s.startswith("SAVEPOINT") for s in seen) == 1 and commits(seen) == 1
    assert store.suppression("a@x.com") == Suppression(SuppressionReason.UNSUBSCRIBED, T0, "unsubscribe link c/0")
    assert store.customer("a@x.com").email_status is EmailStatus.UNSUBSCRIBED
    (act,) = [a for a in store.timeline("a@x.com") if a.kind is Kind.UNSUBSCRIBE]
    assert (act.campaign, act.step, act.occurred_at, act.details) == ("c", 0, T0, details)
    store.set_email_status("a@x.com", EmailStatus.OK)
    assert not record()  # on the list already: nothing written, the status left as it is
    assert store.customer("a@x.com").email_status is EmailStatus.OK
    assert [a.kind for a in store.timeline("a@x.com")].count(Kind.UNSUBSCRIBE) == 1


def test_a_failure_inside_a_callers_transaction_keeps_nothing(store):
    sid = queue(store)
    claim(store)

    def claim_then_fail() -> None:
        with store.transaction():
            store.mark_sending(sid, "<m1@x>", T0, ME)
            store.suppress("a@x.com", "manual", "test", T0)
            raise RuntimeError

    with pytest.raises(RuntimeError):
        claim_then_fail()
    assert store.sends()[0].status is SendStatus.QUEUED
    assert store.suppressions() == {}


def test_a_sync_is_one_commit(store):
    seen = statements(store)
    stats = store.apply_sync("s.csv", [Customer(f"c{i}@x.com", i + 2, {"n": i}) for i in range(100)], {}, {}, T0)
    assert stats.added == 100 and commits(seen) == 1


def test_apply_inbound_writes_the_message_and_the_cursor_in_one_commit(store):
    store.apply_sync("s.csv", [Customer("a@x.com", 2, {"owner": "o@x.com"})], {}, {}, T0)
    r = rec("<r1@x>", key="a@x.com", subject="Re: hi", details=InboundDetails("a@x.com", (), "", None),
            digest="d1", notify_owner=("o@x.com", "<n1@x>"))
    d = Decision("INBOX", 7, 42, "file-1", activities=(r,),
                 quarantine=QuarantineRecord("maildir uid 42", b"raw", "odd", "a@x.com", "a@x.com", None))
    seen = statements(store)
    assert store.apply_inbound(d, T0)
    assert commits(seen) == 1
    assert store.mailbox_cursor("INBOX") == Cursor(7, 42)
    assert store.maildir_seen("INBOX") == frozenset({"file-1"})
    (note,) = [s for s in store.sends() if s.kind is SendKind.OWNER_NOTIFICATION]
    assert (note.status, note.email, note.message_id) == (SendStatus.QUEUED, "o@x.com", "<n1@x>")
    assert store.activity(int(note.step_id or 0)).message_id == "<r1@x>"  # its key: the activity it forwards
    assert not store.apply_inbound(d, T0)  # the same message again: nothing new


def test_a_batch_of_fetched_messages_is_one_commit_with_each_folders_cursor_at_its_last(store):
    """Issue #13: decisions applied together; a message delivered twice within the batch is logged once."""
    def dec(folder: str, uid: int, mid: str, digest: str, seen: str | None = None) -> Decision:
        return Decision(folder, 7, uid, seen, activities=(rec(mid, digest=digest),))

    batch = [dec("INBOX", 1, "<a@x>", "d1", "f1"), dec("Support", 4, "<b@x>", "d2"), dec("INBOX", 2, "<c@x>", "d3",
             "f2"), dec("Support", 9, "<a@x>", "d1"), dec("INBOX", 5, "<a@x>", "other content", "f3")]
    seen = statements(store)
    assert store.apply_inbound_many(batch, T0) == [True, True, True, False, True]
    assert commits(seen) == 1
    assert store.mailbox_cursor("INBOX") == Cursor(7, 5) and store.mailbox_cursor("Support") == Cursor(7, 9)
    assert store.maildir_seen("INBOX") == frozenset({"f1", "f2", "f3"})
    assert store.conn.execute("SELECT COUNT(*) FROM activities").fetchone()[0] == 4


def test_a_folders_cursor_never_moves_back_under_the_same_uidvalidity(store):
    """Issue #20: two workers' batches of one folder may commit out of order; the earlier must not rewind it."""
    def dec(uid: int, validity: int = 7) -> Decision:
        return Decision("INBOX", validity, uid, None, activities=(rec(f"<m{uid}.{validity}@x>", digest=f"d{uid}"),))

    store.apply_inbound_many([dec(9)], T0)  # the later batch commits first
    store.apply_inbound_many([dec(4)], T0)
    assert store.mailbox_cursor("INBOX") == Cursor(7, 9)
    store.apply_inbound_many([dec(12)], T0)
    assert store.mailbox_cursor("INBOX") == Cursor(7, 12)
    store.apply_inbound_many([dec(3, validity=8)], T0)  # the folder was rebuilt: its new numbering counts
    assert store.mailbox_cursor("INBOX") == Cursor(8, 3)


def test_a_batch_that_fails_keeps_nothing_and_moves_no_cursor(store):
    good = rec("<a@x>", source="m", digest="d")
    bad = rec("<b@x>", source="m", details=InboundDetails("", (object(),), "", None),
              digest="e")  # details that cannot be stored
    with pytest.raises(TypeError):
        store.apply_inbound_many([Decision("INBOX", 7, 1, "f1", activities=(good,)),
                                  Decision("INBOX", 7, 2, "f2", activities=(bad,))], T0)
    assert store.mailbox_cursor("INBOX") is None and store.maildir_seen("INBOX") == frozenset()
    assert store.conn.execute("SELECT COUNT(*) FROM activities").fetchone()[0] == 0


@pytest.fixture
def sqlite_store(tmp_path):
    """For what only SQLite can show (its virtual machine's steps)."""
    s = Store.open(tmp_path / "crm.sqlite")
    yield s
    s.close()


def test_the_work_each_fetched_message_costs_the_log_does_not_grow_with_the_log(sqlite_store):
    """No full-table scan per message (issue #13): the dedup lookup once scanned ``activities``.

    Counts SQLite's virtual-machine steps (a progress handler) for what one
    fetched message asks of the log — the lookups ``decide`` makes, then
    ``apply_inbound``, once new and once as a duplicate — with 100 and then
    4,100 inbound activities already logged. Answered from indexes, the work
    stays about the same; a scan makes it forty times larger.
    """
    store = sqlite_store
    store.apply_sync("s.csv", [Customer("a@x.com", 2, {"owner": "o@x.com"})], {}, {}, T0)

    def log_messages(start: int, n: int) -> None:
        with store.transaction():
            for i in range(start, start + n):
                store.add_activity(kind="email_in", occurred_at=T0, now=T0, message_id=f"<old{i}@x>",
                                   digest=f"d{i}", customer_key="a@x.com")

    def steps_for_one_message(n: int) -> int:
        count = [0]

        def tick() -> int:
            count[0] += 1
            return 0

        store.conn.raw.set_progress_handler(tick, 10)
        try:
            for attempt in range(2):
                store.sent_message_ids([f"<s{n}@x>"])
                store.customer("a@x.com")
                r = rec(f"<new{n}@x>", key="a@x.com", subject="Re: hi",
                        details=InboundDetails("a@x.com", (), "", None), digest="d")
                assert store.apply_inbound(Decision("INBOX", 7, n + attempt, None, activities=(r,)),
                                           T0) is (attempt == 0)
        finally:
            store.conn.raw.set_progress_handler(None, 0)
        return count[0]

    log_messages(0, 100)
    small = steps_for_one_message(1)
    log_messages(100, 4000)
    large = steps_for_one_message(2)
    assert large < 2 * small, (small, large)


# ---------------------------------------------------------------- typed results


def test_sheet_state_round_trip(store):
    assert store.sheet_state("s") is None
    store.set_sheet_state("s", "fp:map", 10, ["row 3 bad"], T0)
    assert store.sheet_state("s") == SheetState("fp:map", 10, ("row 3 bad",), ())
    store.set_sheet_state("s", "fp2:map", 11, ("row 3 bad",), T0, ("row 4 blanked",))
    assert store.sheet_state("s") == SheetState("fp2:map", 11, ("row 3 bad",), ("row 4 blanked",))
    store.set_sheet_state("s", None, 0, [], T0)
    assert store.sheet_state("s") is None


def test_inbound_history_decodes_bounce_permanence_old_rows_too(store):
    def bounce(key: str, mid: str, details: dict) -> None:
        store.add_activity(kind="bounce", occurred_at=T0, now=T0, customer_key=key, message_id=mid,
                           campaign="c", details=details, digest=mid)

    bounce("a@x.com", "<b1@x>", {"permanence": "soft", "permanent": False})
    bounce("b@x.com", "<b2@x>", {"permanent": True})  # logged before issue #11: permanent only
    bounce("c@x.com", "<b3@x>", {"permanent": False})
    bounce(None, "<b4@x>", {"permanence": "hard"})  # not matched to a customer: left out
    store.add_activity(kind="email_in", occurred_at=T0, now=T0 + timedelta(hours=1), customer_key="a@x.com",
                       message_id="<r1@x>", digest="r1")
    got = {(e.customer_key, e.kind): (e.permanence, e.campaign) for e in store.inbound_history()}
    assert got == {("a@x.com", Kind.BOUNCE): (Permanence.SOFT, "c"), ("b@x.com", Kind.BOUNCE): (Permanence.HARD, "c"),
                   ("c@x.com", Kind.BOUNCE): (Permanence.DELAYED, "c"), ("a@x.com", Kind.EMAIL_IN): (None, None)}
    reply = next(e for e in store.inbound_history() if e.kind is Kind.EMAIL_IN)
    assert reply.at == T0 + timedelta(hours=1)  # when it was logged


def test_activity_details_decoded_and_kept_verbatim_for_json(store):
    store.apply_sync("s.csv", [Customer("a@x.com", 2, {"n": 1})], {}, {}, T0)
    (added,) = store.timeline("a@x.com")
    assert added.kind is Kind.CUSTOMER_ADDED and added.details == CustomerAddedDetails(2)
    assert added.to_dict() == {"id": added.id, "kind": "customer_added", "occurred_at": "2026-11-27T02:00:00Z",
                               "subject": None, "body": None, "message_id": None, "campaign": None, "step": None,
                               "source": "s.csv", "details": '{"row":2}'}  # as SQLite's json_object wrote it
    assert store.activity(added.id) == added
    assert store.activity(10_000) is None


def test_suppressions_quarantine_and_funnel(store):
    store.suppress(" A@X.com ", "unsubscribed", "cli", T0)
    assert store.suppressions() == {"a@x.com": Suppression("unsubscribed", T0, "cli")}
    assert store.suppressions()["a@x.com"].to_dict() == {"reason": "unsubscribed", "at": "2026-11-27T02:00:00Z",
                                                         "source": "cli"}
    store.quarantine(source="maildir uid 1", raw=b"x", error="unreadable", now=T0, customer_key="a@x.com")
    (q,) = store.quarantined_contacts()
    assert (q.customer_key, q.received_at, q.error) == ("a@x.com", T0, "unreadable")
    sid = queue(store)
    claim(store)
    store.mark_sending(sid, "<m1@x>", T0, ME)
    store.mark_sent(sid, T0, customer_key="a@x.com", campaign="c", step=0, message_id="<m1@x>", subject="s",
                    body="b", source="outbox")
    store.add_activity(kind="email_in", occurred_at=T0, now=T0 + timedelta(hours=1), customer_key="a@x.com",
                       message_id="<r1@x>", digest="r1")
    (row,) = store.funnel()
    assert row == FunnelRow("c", 0, sent=1, replied=1, reply_rate=1.0)
    assert list(row.to_dict()) == ["campaign", "step", "queued", "sending", "sent", "failed", "uncertain", "skipped",
                                   "bounced", "replied", "unsubscribed", "reply_rate", "clicked"]
