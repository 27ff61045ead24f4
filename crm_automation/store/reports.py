"""Reports over the log: the funnel, what needs attention, stage runs and the queue, customer search.

The queries behind the application layer's read-only use cases
(:mod:`crm_automation.app`, issue #18): each returns frozen dataclasses with
decoded values, and decides nothing (which statuses need attention, how
far back "recent" goes and how many rows to show are the caller's).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from crm_automation.models import EmailStatus, SendStatus
from crm_automation.store.activities import PERMANENCE_SQL
from crm_automation.store.connection import Connection, iso, parse_iso
from crm_automation.store.customers import StoredCustomer
from crm_automation.store.schema import INBOUND_KINDS_SQL


@dataclass(frozen=True, slots=True)
class FunnelRow:
    """One campaign step: its sends by status, and the customers who bounced, replied or unsubscribed after.

    "After" means logged after the send (the worker could not have known
    earlier); ``reply_rate`` is replied / sent, to four places.
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


class Reports(Connection):
    """The store's part that reads across tables for reports, and records stage runs (table ``runs``)."""

    def start_run(self, job: str, now: datetime) -> int:
        """Record that a job started."""
        with self.transaction():
            cur = self.conn.execute("INSERT INTO runs (job, started_at, ok) VALUES (?, ?, NULL)", (job, iso(now)))
        return int(cur.lastrowid or 0)

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
        """Per campaign and step: counts by status, plus bounced/replied/unsubscribed after the send."""
        counts: dict[tuple[str, int], dict[str, int]] = {}
        for c, s, st, n in self.conn.execute(
                "SELECT campaign, step, status, COUNT(*) FROM sends GROUP BY campaign, step, status "
                "ORDER BY campaign, step"):
            counts.setdefault((c, s), {})[SendStatus(st).value] = n
        # "bounced" counts what the planner and the suppressions treat as bounced (issue #11): a hard bounce,
        # or a lost message (soft) of this campaign or of an unknown one; a delay warning is not a bounce.
        bounced = (f"a.kind = 'bounce' AND {PERMANENCE_SQL} != 'delayed' AND ({PERMANENCE_SQL} = 'hard' OR "
                   "a.campaign IS NULL OR a.campaign = s.campaign)")
        out = []
        for (c, s), by_status in counts.items():
            after = {}
            for cond, col in ((bounced, "bounced"), ("a.kind = 'email_in'", "replied"),
                              ("a.kind = 'unsubscribe'", "unsubscribed")):
                after[col] = int(self.conn.execute(
                    "SELECT COUNT(DISTINCT s.customer_key) FROM sends s JOIN activities a ON a.customer_key = "
                    f"s.customer_key WHERE s.campaign = ? AND s.step = ? AND s.status = 'sent' AND {cond} "
                    "AND COALESCE(a.logged_at, a.occurred_at) > s.sent_at", (c, s)).fetchone()[0])
            n = {st: by_status.get(st.value, 0) for st in SendStatus}
            sent = n[SendStatus.SENT]
            out.append(FunnelRow(
                c, s, queued=n[SendStatus.QUEUED], sending=n[SendStatus.SENDING], sent=sent,
                failed=n[SendStatus.FAILED], uncertain=n[SendStatus.UNCERTAIN], skipped=n[SendStatus.SKIPPED],
                bounced=after["bounced"], replied=after["replied"], unsubscribed=after["unsubscribed"],
                reply_rate=round(after["replied"] / sent, 4) if sent else 0.0))
        return out

    def counts(self) -> dict[str, int]:
        """Row counts per table (for --json summaries and tests)."""
        return {t: self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("customers", "activities", "sends", "suppressions", "quarantine")}

    # ------------------------------------------------------------ the application layer's reads (issue #18)
    def last_runs(self) -> list[RunRow]:
        """Each job's last run (by job name), with when it last finished ``ok``."""
        last_ok = {job: parse_iso(t) for job, t in self.conn.execute(
            "SELECT job, MAX(finished_at) FROM runs WHERE ok = 1 GROUP BY job")}
        out = []
        for job, started, finished, ok, stats, error in self.conn.execute(
                "SELECT r.job, r.started_at, r.finished_at, r.ok, r.stats, r.error FROM runs r "
                "JOIN (SELECT MAX(id) AS id FROM runs GROUP BY job) m ON r.id = m.id ORDER BY r.job"):
            decoded = json.loads(stats) if stats else {}
            out.append(RunRow(job, parse_iso(started) or _EPOCH, parse_iso(finished), None if ok is None else bool(ok),
                              error, decoded if isinstance(decoded, dict) else {}, last_ok.get(job)))
        return out

    def queue_depth(self, now: datetime) -> QueueDepth:
        """Sends by status; ``due``: queued ones whose retry time (if any) has come by ``now``.

        "Due" is the send pass's own test: never attempted, no retry time, or
        a retry time not after ``now``.
        """
        # Only the states still open: with an index on status, a seek over them, never over every sent row.
        by_status = dict(self.conn.execute(
            "SELECT status, COUNT(*) FROM sends WHERE status IN ('queued', 'sending', 'uncertain', 'failed') "
            "GROUP BY status").fetchall())
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

        The inbound-kinds condition is spelled as the partial index's, so
        SQLite may read only inbound rows instead of every activity
        (:data:`~crm_automation.store.schema.INBOUND_KINDS_SQL`, issue #13).
        """
        return [ReplyRow(i, key, parse_iso(at) or _EPOCH, subject, body, campaign, step)
                for i, key, at, subject, body, campaign, step in self.conn.execute(
                    "SELECT id, customer_key, COALESCE(logged_at, occurred_at) AS t, subject, body, campaign, step "
                    f"FROM activities WHERE kind IN {INBOUND_KINDS_SQL} AND kind = 'email_in' AND t >= ? "
                    "ORDER BY t DESC, id DESC LIMIT ?", (iso(since), limit))]

    def search_customers(self, text: str, limit: int) -> list[StoredCustomer]:
        """Customers whose key or any mapped value contains ``text`` (ASCII case ignored), at most ``limit``.

        Values are matched one by one (``json_each``), never the JSON text,
        so a field's name or the JSON's quoting never matches. Customers
        still in the sheet come first, then by key.
        """
        pattern = _like(text)
        rows = self.conn.execute(
            "SELECT key, row, data, first_seen, email_status, present FROM customers c WHERE c.key LIKE :p "
            "ESCAPE '\\' OR EXISTS (SELECT 1 FROM json_each(c.data) j WHERE CAST(j.value AS TEXT) LIKE :p "
            "ESCAPE '\\') ORDER BY present DESC, key LIMIT :n", {"p": pattern, "n": limit})
        return [StoredCustomer(k, r, json.loads(d), parse_iso(fs) or _EPOCH, EmailStatus(es or "ok"), bool(p))
                for k, r, d, fs, es, p in rows]
