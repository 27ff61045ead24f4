"""Reports over the log: the funnel, what needs attention, stage runs and the queue, customer search.

The queries behind the application layer's read-only use cases
(:mod:`crm_automation.app`, issue #18): each returns frozen dataclasses with
decoded values, and decides nothing (which statuses need attention, how
far back "recent" goes and how many rows to show are the caller's).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise

from crm_automation.models import EmailStatus, SendStatus
from crm_automation.store.connection import Connection, iso, parse_iso
from crm_automation.store.customers import StoredCustomer
from crm_automation.store.schema import EVENT_KINDS_SQL, LOGGED_AT_SQL, permanence_sql


@dataclass(frozen=True, slots=True)
class FunnelRow:
    """One campaign step: its sends by status, and the customers who bounced, replied or unsubscribed after.

    "After" means logged after the send (the worker could not have known
    earlier); ``reply_rate`` is replied / sent, to four places. ``clicked``
    (issue #19): customers who clicked a tracked link of this step's message
    (a ``click`` activity logged against the step's campaign and step; a
    click comes through the sent message's own link, so it is after the
    send by nature). Added last, so ``report --json``'s fields keep their order.
    """

    campaign: str
    step: int
    queued: int = 0
    sending: int = 0
    sent: int = 0
    failed: int = 0
    uncertain: int = 0
    skipped: int = 0
    bounced: int = 0
    replied: int = 0
    unsubscribed: int = 0
    reply_rate: float = 0.0
    clicked: int = 0

    def to_dict(self) -> dict[str, str | int | float]:
        """``report --json``/``--csv``: the fields in this order, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True, slots=True)
class RunRow:
    """A stage's last run (table ``runs``), and when it last finished well.

    ``finished_at``/``ok`` are None while it runs (or when the process died
    in it: a stage never finished shows as started and not finished).
    """

    job: str
    started_at: datetime
    finished_at: datetime | None
    ok: bool | None
    error: str | None
    stats: dict[str, object]
    last_ok_at: datetime | None


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Sends by state: ``queued`` of which ``due`` now (the rest wait for a retry time), and the others."""

    queued: int
    due: int
    sending: int
    uncertain: int
    failed: int


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    """A quarantined message without its bytes: where from, when, why, and whose as far as its headers tell."""

    id: int
    source: str
    received_at: datetime
    error: str
    from_addr: str | None
    customer_key: str | None
    size: int | None


@dataclass(frozen=True, slots=True)
class QuarantinedBytes:
    """One quarantined message whole: what the list shows of it, and its bytes exactly as they were received."""

    row: QuarantineRow
    raw: bytes


@dataclass(frozen=True, slots=True)
class ReplyRow:
    """A customer's reply (an ``email_in`` activity), with when it was logged (when the team could first see it)."""

    id: int
    customer_key: str | None
    logged_at: datetime
    subject: str | None
    body: str | None
    campaign: str | None
    step: int | None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # for a time column a hand-edited row left empty


def _like(text: str) -> str:
    """``text`` as a LIKE pattern matching it anywhere; its ``%``, ``_`` and backslash taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@dataclass(frozen=True, slots=True)
class LastTimes:
    """Per customer: when the last campaign email was sent and when the last reply came (write-back columns)."""

    sent: dict[str, datetime]
    replied: dict[str, datetime]


# Customers whose sent message of a step was followed by a reply, a bounce, an unsubscribe: the three columns
# schema 10's triggers keep on each send, read from their partial indexes in (campaign, step, customer) order.
_AFTER_SQL = " UNION ALL ".join(
    f"SELECT campaign, step, '{col}', COUNT(DISTINCT customer_key) FROM sends "
    f"WHERE status = 'sent' AND {col} = 1 GROUP BY campaign, step" for col in ("replied", "bounced", "unsubscribed"))
# Customers who clicked, per step: the clicks' own index is in (campaign, step, customer) order, so no sorting.
_CLICKED_SQL = ("SELECT campaign, step, COUNT(DISTINCT customer_key) FROM activities WHERE kind = 'click' "
                "AND customer_key IS NOT NULL AND campaign IS NOT NULL GROUP BY campaign, step")
DAY_COLUMNS = ("sent", "replied", "bounced", "unsubscribed", "clicked")
_DAY_KINDS = {"email_in": "replied", "bounce": "bounced", "unsubscribe": "unsubscribed", "click": "clicked"}


@dataclass(frozen=True, slots=True)
class DayCounts:
    """One interval of the dashboard's charts (a local day): what was sent, and what came back, in it."""

    start: datetime
    end: datetime
    sent: int = 0
    replied: int = 0
    bounced: int = 0
    unsubscribed: int = 0
    clicked: int = 0


class Reports(Connection):
    """The store's part that reads across tables for reports, and records stage runs (table ``runs``)."""

    def start_run(self, job: str, now: datetime) -> int:
        """Record that a job started."""
        with self.transaction():
            got = self.conn.execute("INSERT INTO runs (job, started_at, ok) VALUES (?, ?, NULL) RETURNING id",
                                    (job, iso(now))).fetchone()
        return int(got[0])

    def finish_run(self, run_id: int, now: datetime, *, ok: bool, stats: Mapping[str, object],
                   error: str | None) -> None:
        """Record how a job ended."""
        with self.transaction():
            self.conn.execute("UPDATE runs SET finished_at = ?, ok = ?, stats = ?, error = ? WHERE id = ?",
                              (iso(now), int(ok), json.dumps(stats, ensure_ascii=False, default=str), error,
                               run_id))

    def last_times(self) -> LastTimes:
        """Per customer: time of the last email sent (owner notifications aside) and of the last reply."""
        sent = {k: t for k, s in self.conn.execute(
            "SELECT customer_key, MAX(sent_at) FROM sends WHERE status = 'sent' AND kind = 'campaign_step' "
            "GROUP BY customer_key")
            if (t := parse_iso(s))}
        replied = {k: t for k, s in self.conn.execute(
            "SELECT customer_key, MAX(occurred_at) FROM activities WHERE kind = 'email_in' AND customer_key "
            "IS NOT NULL GROUP BY customer_key") if (t := parse_iso(s))}
        return LastTimes(sent, replied)

    def funnel(self) -> list[FunnelRow]:
        """Per campaign and step: counts by status, plus bounced/replied/unsubscribed after the send, and clicked.

        A handful of index reads whatever the size of the log (issue #19:
        the per-step queries took ~20 s at 100,000 customers and 1,000,000
        activities; matching each customer's last events with their earlier
        messages at read time still ~270 ms). "After the send" is kept per
        send by schema 10's triggers (``sends.replied``, ``bounced``,
        ``unsubscribed``: :data:`~crm_automation.store.schema.FOLLOW_UP_SET_SQL`,
        the old per-step condition per row), so each column is a count of
        the customers in a small partial index, in step order.
        """
        counts: dict[tuple[str, int], dict[str, int]] = {}
        for st in SendStatus:  # a literal status each: its partial index (schemas 6 and 7)
            for c, s, n in self.conn.execute(
                    f"SELECT campaign, step, COUNT(*) FROM sends WHERE status = '{st.value}' GROUP BY campaign, step"):
                counts.setdefault((c, s), {})[st.value] = n
        counts = dict(sorted(counts.items()))
        after: dict[tuple[str, int], dict[str, int]] = {}
        for c, s, what, n in self.conn.execute(_AFTER_SQL):
            after.setdefault((c, s), {})[what] = n
        for c, s, n in self.conn.execute(_CLICKED_SQL):
            after.setdefault((c, s), {})["clicked"] = n
        out = []
        for (c, s), by_status in counts.items():
            n = {st: by_status.get(st.value, 0) for st in SendStatus}
            sent = n[SendStatus.SENT]
            a = after.get((c, s), {})
            out.append(FunnelRow(
                c, s, queued=n[SendStatus.QUEUED], sending=n[SendStatus.SENDING], sent=sent,
                failed=n[SendStatus.FAILED], uncertain=n[SendStatus.UNCERTAIN], skipped=n[SendStatus.SKIPPED],
                bounced=a.get("bounced", 0), replied=a.get("replied", 0), unsubscribed=a.get("unsubscribed", 0),
                reply_rate=round(a.get("replied", 0) / sent, 4) if sent else 0.0, clicked=a.get("clicked", 0)))
        return out

    def daily(self, bounds: Sequence[datetime], campaign: str | None = None) -> list[DayCounts]:
        """Per interval ``[bounds[i], bounds[i+1])``: messages sent, replies, bounces, unsubscribes, clicks.

        The caller draws the intervals (local days, issue #19's charts); each
        kind is one range read of a time index per interval. Replies are
        from known customers (an enquiry from a new sender is not a reply);
        bounces leave delay warnings out, as the funnel does. With
        ``campaign``: messages of that campaign, and events logged against
        it, or logged against no campaign (a reply matched by its sender)
        from a customer the campaign had mailed before: as the funnel counts
        a reply after a step's send.
        """
        if len(bounds) < 2:
            return []
        days = " UNION ALL ".join(f"SELECT {i} AS i, ? AS lo, ? AS hi" for i in range(len(bounds) - 1))
        edges = [iso(t) for pair in pairwise(bounds) for t in pair]
        out = {i: dict.fromkeys(DAY_COLUMNS, 0) for i in range(len(bounds) - 1)}
        # The campaign is counted, not filtered on: as a condition, SQLite read every message of the campaign
        # per day by its (campaign, step) index instead of the day's messages by time (seconds, not ms).
        count = "COUNT(*)" if campaign is None else "SUM(CASE WHEN s.campaign = ? THEN 1 ELSE 0 END)"
        args: list[object] = [campaign] if campaign is not None else []
        for i, n in self.conn.execute(
                f"WITH days AS ({days}) SELECT d.i, {count} FROM days d JOIN sends s ON s.status = 'sent' "
                "AND s.sent_at >= d.lo AND s.sent_at < d.hi GROUP BY d.i", [*edges, *args]):
            out[i]["sent"] = n or 0
        t = "COALESCE(a.logged_at, a.occurred_at)"  # LOGGED_AT_SQL, as schema 7's index spells it
        by = "CASE a.kind " + " ".join(f"WHEN '{k}' THEN '{col}'" for k, col in _DAY_KINDS.items()) + " END"
        sql = (f"WITH days AS ({days}) SELECT d.i, {by}, COUNT(*) FROM days d JOIN activities a ON "
               f"a.kind IN {EVENT_KINDS_SQL} AND {t} >= d.lo AND {t} < d.hi "
               f"WHERE (a.kind != 'email_in' OR a.customer_key IS NOT NULL) "
               f"AND (a.kind != 'bounce' OR {permanence_sql(self.dialect)} != 'delayed')")
        args = [*edges]
        if campaign is not None:
            sql += (" AND (a.campaign = ? OR a.campaign IS NULL AND EXISTS (SELECT 1 FROM sends s WHERE "
                    f"s.status = 'sent' AND s.customer_key = a.customer_key AND s.sent_at < {t} "
                    "AND s.campaign = ?))")
            args += [campaign, campaign]
        for i, col, n in self.conn.execute(sql + " GROUP BY d.i, a.kind", args):
            out[i][col] = n
        return [DayCounts(bounds[i], bounds[i + 1], **cols) for i, cols in out.items()]

    def counts(self) -> dict[str, int]:
        """Row counts per table (for --json summaries and tests)."""
        return {t: self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("customers", "activities", "sends", "suppressions", "quarantine")}

    # ------------------------------------------------------------ the application layer's reads (issue #18)
    def last_runs(self) -> list[RunRow]:
        """Each job's last run (by job name), with when it last finished ``ok``.

        A few seeks on the ``runs`` index (schema 7) rather than a pass over
        every run ever recorded (a worker records four every few minutes:
        ~100,000 in three months): the next job name after the last one,
        then that job's newest run and newest good run.
        """
        out = []
        job = self.conn.execute("SELECT MIN(job) FROM runs").fetchone()[0]
        while job is not None:
            started, finished, ok, stats, error = self.conn.execute(
                "SELECT started_at, finished_at, ok, stats, error FROM runs WHERE job = ? ORDER BY id DESC LIMIT 1",
                (job,)).fetchone()
            last_ok = self.conn.execute("SELECT MAX(finished_at) FROM runs WHERE job = ? AND ok = 1",
                                        (job,)).fetchone()[0]
            decoded = json.loads(stats) if stats else {}
            out.append(RunRow(job, parse_iso(started) or _EPOCH, parse_iso(finished), None if ok is None else bool(ok),
                              error, decoded if isinstance(decoded, dict) else {}, parse_iso(last_ok)))
            job = self.conn.execute("SELECT MIN(job) FROM runs WHERE job > ?", (job,)).fetchone()[0]
        return out

    def queue_depth(self, now: datetime) -> QueueDepth:
        """Sends by status; ``due``: queued ones whose retry time (if any) has come by ``now``.

        "Due" is the send pass's own test: never attempted, no retry time, or
        a retry time not after ``now``.
        """
        # Only the states still open, one literal status each: SQLite uses a partial index (schemas 6 and 7) only
        # for a condition naming its status, so ``status IN (...)`` read every send (~50 ms at 400,000 sends).
        by_status = {st: self.conn.execute(f"SELECT COUNT(*) FROM sends WHERE status = '{st}'").fetchone()[0]
                     for st in ("queued", "sending", "uncertain", "failed")}
        due = self.conn.execute(
            "SELECT COUNT(*) FROM sends WHERE status = 'queued' AND (attempts = 0 OR next_attempt_at IS NULL "
            "OR next_attempt_at <= ?)", (iso(now),)).fetchone()[0]
        return QueueDepth(queued=by_status.get("queued", 0), due=int(due), sending=by_status.get("sending", 0),
                          uncertain=by_status.get("uncertain", 0), failed=by_status.get("failed", 0))

    def quarantine_count(self) -> int:
        """How many messages are in quarantine."""
        return int(self.conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0])

    def quarantined(self, limit: int) -> list[QuarantineRow]:
        """The newest ``limit`` quarantined messages, newest first, without their bytes."""
        return [QuarantineRow(i, src, parse_iso(at) or _EPOCH, err, frm, key, size)
                for i, src, at, err, frm, key, size in self.conn.execute(
                    "SELECT id, source, received_at, error, from_addr, customer_key, size FROM quarantine "
                    "ORDER BY id DESC LIMIT ?", (limit,))]

    def quarantined_message(self, qid: int) -> QuarantinedBytes | None:
        """Quarantined message ``qid`` with its bytes (None when there is none by that id)."""
        found = self.conn.execute("SELECT id, source, received_at, error, from_addr, customer_key, size, raw "
                                  "FROM quarantine WHERE id = ?", (qid,)).fetchone()
        if found is None:
            return None
        i, src, at, err, frm, key, size, raw = found
        return QuarantinedBytes(QuarantineRow(i, src, parse_iso(at) or _EPOCH, err, frm, key, size), bytes(raw or b""))

    def replies_since(self, since: datetime, limit: int) -> list[ReplyRow]:
        """Replies (``email_in``) logged at or after ``since``, newest first, at most ``limit``.

        The kinds and the time are spelled as schema 7's index on the events
        by time has them (:data:`~crm_automation.store.schema.EVENT_KINDS_SQL`,
        :data:`~crm_automation.store.schema.LOGGED_AT_SQL`), so SQLite reads
        the replies since ``since`` from it instead of every inbound
        activity (issue #19; the same trick as issue #13's).
        """
        return [ReplyRow(i, key, parse_iso(at) or _EPOCH, subject, body, campaign, step)
                for i, key, at, subject, body, campaign, step in self.conn.execute(
                    f"SELECT id, customer_key, {LOGGED_AT_SQL}, subject, body, campaign, step FROM activities "
                    f"WHERE kind IN {EVENT_KINDS_SQL} AND kind = 'email_in' AND {LOGGED_AT_SQL} >= ? "
                    f"ORDER BY {LOGGED_AT_SQL} DESC, id DESC LIMIT ?", (iso(since), limit))]

    def search_customers(self, text: str, limit: int) -> list[StoredCustomer]:
        """Customers whose key or any mapped value contains ``text`` (ASCII case ignored), at most ``limit``.

        Values are matched one by one (``json_each``), never the JSON text,
        so a field's name or the JSON's quoting never matches. Customers
        still in the sheet come first, then by key.

        Why a first test on the JSON text (issue #19: 200 ms at 100,000
        customers, 25 ms with it): a value containing ``text`` has it
        verbatim in the JSON text too, so one LIKE over the text drops most
        customers before their values are taken apart. That holds for text
        values only when ``text`` has nothing JSON escapes (a double quote, a backslash,
        control characters; non-ASCII is written as it is), and it is no
        test for numbers and booleans (``true`` is ``1`` as text): so it
        applies only to a ``text`` that could not be part of a number.
        """
        pattern = _like(text)
        like = self.dialect.like  # PostgreSQL: ILIKE, which ignores the case of every letter, not ASCII only
        prefilter = f"(c.key {like} :p ESCAPE '\\' OR c.data {like} :p ESCAPE '\\') AND " if _text_only(text) else ""
        rows = self.conn.execute(
            f"SELECT key, row, data, first_seen, email_status, present FROM customers c WHERE {prefilter}"
            f"(c.key {like} :p ESCAPE '\\' OR EXISTS (SELECT 1 FROM {self.dialect.json_values('c.data', 'j')} "
            f"WHERE CAST(j.value AS TEXT) {like} :p ESCAPE '\\')) ORDER BY present DESC, key LIMIT :n",
            {"p": pattern, "n": limit})
        return [StoredCustomer(k, r, json.loads(d), parse_iso(fs) or _EPOCH, EmailStatus(es or "ok"), bool(p))
                for k, r, d, fs, es, p in rows]


_NUMBER_CHARS = frozenset("0123456789.+-eE")


def _text_only(text: str) -> bool:
    """Whether every value containing ``text`` is a string written verbatim in the JSON (see ``search_customers``)."""
    return (any(ch not in _NUMBER_CHARS for ch in text)
            and not any(ch in '"\\' or ord(ch) < 0x20 for ch in text))
