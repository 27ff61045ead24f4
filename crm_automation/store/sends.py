"""Sends: the exactly-once lifecycle of every email the worker hands over, and when each campaign was first seen.

One row per (campaign, step, customer), unique, so a rerun never queues a
send twice. Its status (:class:`~crm_automation.models.SendStatus`) moves::

    (planned)  -> queued | skipped      queue_sends (skipped: blocked when planned, with the reason)
    queued     -> queued, claimed       claim_sends: ``holder`` = one worker (store/claims.py, issue #20)
    queued     -> sending               mark_sending (claimed by the caller), committed before the hand-over
    sending    -> sent                  mark_sent (handed over; or found handed over after a crash)
    sending    -> queued                mark_retry (4xx, quota, not connected); mark_status after a crash
                                        when the transport knows it never got the message
    sending    -> uncertain             mark_status (the hand-over may or may not have happened)
    queued/sending -> failed            mark_failed (a message that cannot be built; a 5xx answer)
    queued     -> skipped               mark_status (blocked when its turn came); mark_sent_and_sending
                                        (its address suppressed a moment before the hand-over, issue #19)
    uncertain/failed -> queued          requeue (the admin's decision)

``sending`` committed first means a crash leaves evidence that recovery
resolves (``send.recovery.recover``); ``uncertain`` is never resent by
itself.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from crm_automation.models import Kind, SendStatus, StepState
from crm_automation.store.activities import INSERT_ACTIVITY_SQL, activity_row, insert_activity
from crm_automation.store.connection import Connection, Driver, iso, parse_iso

_SEND_COLS = ("id, campaign, step, customer_key, status, message_id, queued_at, sent_at, error, email, attempts, "
              "next_attempt_at, step_id, kind")
# SQLite's ``UPDATE OR IGNORE`` in portable SQL (store/dialect.py): a row moves to another step id or campaign
# (the condition's ``?``) only when no row of its customer holds that key already (schema 4's unique
# (campaign, step_id, customer_key)); such a row stays where it was, as OR IGNORE left it.
_FREE_STEP_ID = ("NOT EXISTS (SELECT 1 FROM sends o WHERE o.campaign = sends.campaign AND o.step_id = ? "
                 "AND o.customer_key = sends.customer_key)")
_FREE_CAMPAIGN = ("NOT EXISTS (SELECT 1 FROM sends o WHERE o.campaign = ? AND o.step_id = sends.step_id "
                  "AND o.customer_key = sends.customer_key)")
_MOVE_STEPS = ("UPDATE campaign_steps SET campaign = ? WHERE campaign = ? AND NOT EXISTS (SELECT 1 FROM "
               "campaign_steps o WHERE o.campaign = ? AND o.step_id = campaign_steps.step_id)")
# SQLite's two-argument MIN(first_seen, ?) in portable SQL (a NULL first_seen stays NULL, as MIN left it).
_EARLIER_FIRST_SEEN = ("UPDATE campaigns SET first_seen = CASE WHEN ? < first_seen THEN ? ELSE first_seen END "
                       "WHERE id = ?")
NOTIFICATION_LABEL = "owner-notify"  # what ``sends.campaign`` shows for an owner notification (a label, not its key)
DIGEST_LABEL = "owner-digest"  # ``sends.campaign`` of an owner digest (issue #21): a label, its key's prefix


class SendKind(enum.StrEnum):
    """What a ``sends`` row is (``sends.kind``, schema 5); each kind has its own exactly-once key (issue #18).

    ``campaign_step``: (campaign, step_id, customer). ``owner_notification``:
    the activity it forwards (``step_id`` holds the activity's id; one
    notification an activity). ``owner_digest`` (issue #21): (owner
    address, the local date of the digest) - ``customer_key`` holds the
    owner's address, ``step_id`` the date: one digest an owner and day.
    What each kind means to the send pass is :mod:`crm_automation.send.kinds`.
    """

    CAMPAIGN_STEP = "campaign_step"
    OWNER_NOTIFICATION = "owner_notification"
    OWNER_DIGEST = "owner_digest"


@dataclass(frozen=True, slots=True)
class SendRow:
    """One row of ``sends``."""

    id: int
    campaign: str
    step: int
    customer_key: str
    status: SendStatus
    message_id: str | None
    queued_at: datetime | None
    sent_at: datetime | None
    error: str | None
    email: str | None
    attempts: int
    next_attempt_at: datetime | None
    step_id: str | None = None  # the step's identity (issue #17); None only in rows from before schema 4
    kind: SendKind = SendKind.CAMPAIGN_STEP  # what the row is, and so what its key means (schema 5, issue #18)


@dataclass(frozen=True, slots=True)
class SentRef:
    """Which send a Message-ID of ours was: matching a reply or a bounce to the customer and campaign."""

    customer_key: str
    campaign: str
    step: int


def _send(sid: int, campaign: str, step: int, key: str, status: str, mid: str | None, queued: str | None,
          sent: str | None, error: str | None, email: str | None, attempts: int | None, next_at: str | None,
          step_id: str | None, kind: str) -> SendRow:
    return SendRow(sid, campaign, step, key, SendStatus(status), mid, parse_iso(queued), parse_iso(sent), error, email,
                   attempts or 0, parse_iso(next_at), step_id, SendKind(kind))


def insert_sends(conn: Driver, rows: Sequence[Mapping[str, object]]) -> int:
    """Insert sends, leaving existing keys (campaign, step_id, customer) alone; the caller's unit owns the transaction.

    ``kind`` defaults to a campaign step, ``step_id`` to ``step`` as text.
    """
    cur = conn.executemany(
        "INSERT INTO sends (campaign, step, step_id, customer_key, status, message_id, queued_at, error, "
        "email, attempts, kind) VALUES (:campaign, :step, :step_id, :customer_key, :status, :message_id, :queued_at, "
        ":error, :email, 0, :kind) ON CONFLICT DO NOTHING",
        [{"kind": SendKind.CAMPAIGN_STEP.value, "step_id": str(r["step"]), **r} for r in rows])
    return cur.rowcount


def notification_row(activity_id: int | None, customer_key: str, owner: str, message_id: str,
                     now: datetime) -> dict[str, object]:
    """The queued ``sends`` row of an owner notification: its key is the activity it forwards (issue #18).

    ``step_id`` is the activity's id: the unique (campaign, step_id,
    customer) then holds one notification an activity, and a row written
    before schema 5 (campaign ``owner-notify``, the id also as ``step``) has
    the same key, so an upgrade never forwards a reply twice.
    """
    return {"campaign": NOTIFICATION_LABEL, "step": 0, "step_id": str(activity_id), "customer_key": customer_key,
            "status": SendStatus.QUEUED.value, "message_id": message_id, "queued_at": iso(now), "error": None,
            "email": owner, "kind": SendKind.OWNER_NOTIFICATION.value}


def digest_row(owner: str, day: str, now: datetime, *, message_id: str | None, why_not: str | None = None
               ) -> dict[str, object]:
    """The ``sends`` row of an owner's digest of one local day (issue #21): queued, or skipped ``why_not``.

    Its key is (``owner-digest``, the day, the owner's address) in the unique
    (campaign, step_id, customer_key) index every kind shares, so a second
    planning of the same day - another pass, a restart after a kill - inserts
    nothing (``ON CONFLICT DO NOTHING``). No migration: the index is schema 4's.
    """
    return {"campaign": DIGEST_LABEL, "step": 0, "step_id": day, "customer_key": owner,
            "status": (SendStatus.SKIPPED if why_not else SendStatus.QUEUED).value,
            "message_id": None if why_not else message_id, "queued_at": iso(now), "error": why_not,
            "email": owner, "kind": SendKind.OWNER_DIGEST.value}


class Claim(enum.Enum):
    """What :meth:`SendLog.mark_sent_and_sending` did with the next send."""

    SENDING = "sending"  # marked ``sending``: hand it over now
    NOT_QUEUED = "not_queued"  # no longer queued (decided elsewhere meanwhile): leave it alone
    BLOCKED = "blocked"  # its address is blocked now: recorded ``skipped`` with the gate's reason, not handed over
    LIMITED = "limited"  # a rate limit is reached now (counted across workers, issue #20): still queued and claimed


@dataclass(frozen=True, slots=True)
class Gate:
    """Who a message is about to go to, and the rule that says whether it still may (issue #19).

    ``rule`` is the pure core's (:func:`crm_automation.planner.address_block`):
    (the address is on the suppression list, the customer's email status) ->
    why not, or None. The store reads both inside the transaction that
    marks the send ``sending`` and applies the rule's answer; it decides nothing.
    """

    email: str
    customer_key: str
    rule: Callable[[bool, str | None], str | None]


@dataclass(frozen=True, slots=True)
class Sent:
    """A message handed over, to be recorded ``sent`` with its ``email_out`` activity."""

    send_id: int
    at: datetime
    customer_key: str | None  # None: a message to the team that is in no customer's timeline (a digest)
    campaign: str
    step: int
    message_id: str
    subject: str
    body: str
    source: str


def write_sent(conn: Driver, s: Sent) -> None:
    """Sending -> sent and the ``email_out`` activity (the caller's transaction).

    Neither answer is read (the activity's id is not needed): on a
    pipelined unit both go to the server without a wait (issue #20).
    """
    conn.execute("UPDATE sends SET status = 'sent', sent_at = ?, error = NULL WHERE id = ?", (iso(s.at), s.send_id))
    conn.execute(INSERT_ACTIVITY_SQL, activity_row(
        kind=Kind.EMAIL_OUT.value, occurred_at=s.at, now=s.at, customer_key=s.customer_key, subject=s.subject,
        body=s.body, message_id=s.message_id, in_reply_to=None, campaign=s.campaign, step=s.step, source=s.source,
        details={}, digest=None))


class SendLog(Connection):
    """The store's part that records sends (tables ``sends`` and ``campaigns``)."""

    def campaign_first_seen(self, ids: Iterable[str], now: datetime, *, record: bool = True) -> dict[str, datetime]:
        """When each campaign was first seen (recording ``now`` for new ones unless ``record`` is False)."""
        ids = list(ids)
        if not record:
            known = {i: parse_iso(fs) or now for i, fs in self.conn.execute("SELECT id, first_seen FROM campaigns")}
            return {i: known.get(i, now) for i in ids}
        with self.transaction():
            self.conn.executemany("INSERT INTO campaigns (id, first_seen) VALUES (?, ?) ON CONFLICT DO NOTHING",
                                  [(i, iso(now)) for i in ids])
        return {i: parse_iso(fs) or now for i, fs in self.conn.execute("SELECT id, first_seen FROM campaigns")
                if i in ids}

    # ------------------------------------------------------------ campaign definitions (issue #17)
    def campaign_steps(self) -> dict[str, dict[str, StepState]]:
        """Each campaign's steps as the log last planned them (see :mod:`crm_automation.edits`)."""
        out: dict[str, dict[str, StepState]] = {}
        for c, k, pos, tpl, retired, unresolved in self.conn.execute(
                "SELECT campaign, step_id, position, template, retired, unresolved FROM campaign_steps"):
            out.setdefault(c, {})[k] = StepState(tpl, pos, bool(retired), tuple(json.loads(unresolved or "[]")))
        return out

    def expansions(self) -> dict[str, tuple[datetime, str]]:
        """``at`` campaign -> (when it went out to its segment, its ``at`` and ``where`` then)."""
        return {i: (t, d) for i, at, d in self.conn.execute(
            "SELECT id, expanded_at, expanded_as FROM campaigns WHERE expanded_at IS NOT NULL")
            if (t := parse_iso(at)) is not None}

    def record_expansion(self, campaign: str, now: datetime, digest: str, *, since_sends: bool = False) -> None:
        """Note that an ``at`` campaign went out to its segment now (``since_sends``: when its first send was queued).

        ``since_sends`` adopts a campaign that went out before schema 4: the
        time its first send was queued stands for the time it went out.
        """
        with self.transaction():
            self.conn.execute("INSERT INTO campaigns (id, first_seen) VALUES (?, ?) ON CONFLICT DO NOTHING",
                              (campaign, iso(now)))
            if since_sends:
                self.conn.execute(
                    "UPDATE campaigns SET expanded_at = (SELECT MIN(queued_at) FROM sends WHERE campaign = ?), "
                    "expanded_as = ? WHERE id = ? AND expanded_at IS NULL AND EXISTS "
                    "(SELECT 1 FROM sends WHERE campaign = ?)", (campaign, digest, campaign, campaign))
            else:
                self.conn.execute("UPDATE campaigns SET expanded_at = ?, expanded_as = ? WHERE id = ? AND "
                                  "expanded_at IS NULL", (iso(now), digest, campaign))

    def sent_step_count(self, campaign: str, step_id: str) -> int:
        """How many customers were sent one step (by the unique index's prefix)."""
        return int(self.conn.execute("SELECT COUNT(*) FROM sends WHERE campaign = ? AND step_id = ? AND "
                                     f"{self.dialect.no_index('status')} = 'sent'", (campaign, step_id)).fetchone()[0])

    def has_sent_in(self, campaign: str) -> bool:
        """Whether any step of a campaign was sent (rows from before schema 4 left out)."""
        return self.conn.execute(f"SELECT 1 FROM sends WHERE campaign = ? AND {self.dialect.no_index('status')} = "
                                 "'sent' AND step_id IS NOT NULL LIMIT 1", (campaign,)).fetchone() is not None

    def legacy_steps(self) -> list[tuple[str, int]]:
        """(campaign, step) of rows written before schema 4, which have no step_id yet."""
        return list(self.conn.execute("SELECT DISTINCT campaign, step FROM sends WHERE step_id IS NULL"))

    def adopt_step_ids(self, keys: dict[tuple[str, int], str]) -> int:
        """Give rows from before schema 4 their step's identity: (campaign, step) -> step_id."""
        with self.transaction():
            return sum(self.conn.execute(
                f"UPDATE sends SET step_id = ? WHERE campaign = ? AND step = ? AND step_id IS NULL AND "
                f"{_FREE_STEP_ID}", (k, c, n, k)).rowcount for (c, n), k in keys.items())

    def record_campaign_edits(self, states: dict[str, dict[str, StepState]],
                              campaign_renames: Iterable[tuple[str, str]],
                              step_renames: Iterable[tuple[str, str, str]], now: datetime) -> None:
        """Apply what :func:`crm_automation.edits.review` found, in one transaction.

        Renames carry the old key's sends (and the activities naming the old
        campaign) over to the new key, so the history reads as one campaign;
        a row the new key already has is left under the old key
        (``_FREE_CAMPAIGN``, what ``UPDATE OR IGNORE`` did): that customer
        then has both, and is mailed neither again.
        A renamed campaign keeps the earlier of the two first-seen times, so
        its ``new`` and ``change`` triggers keep their audience.
        """
        with self.transaction():
            for old, new in campaign_renames:
                self.conn.execute(f"UPDATE sends SET campaign = ? WHERE campaign = ? AND {_FREE_CAMPAIGN}",
                                  (new, old, new))
                self.conn.execute("UPDATE activities SET campaign = ? WHERE campaign = ?", (new, old))
                self.conn.execute(_MOVE_STEPS, (new, old, new))
                self.conn.execute("DELETE FROM campaign_steps WHERE campaign = ?", (old,))
                row = self.conn.execute("SELECT first_seen FROM campaigns WHERE id = ?", (old,)).fetchone()
                if row is not None and row[0]:
                    self.conn.execute("INSERT INTO campaigns (id, first_seen) VALUES (?, ?) ON CONFLICT DO NOTHING",
                                      (new, row[0]))
                    self.conn.execute(_EARLIER_FIRST_SEEN, (row[0], row[0], new))
                self.conn.execute(
                    "UPDATE campaigns SET (expanded_at, expanded_as) = (SELECT expanded_at, expanded_as FROM campaigns "
                    "WHERE id = ?) WHERE id = ? AND expanded_at IS NULL", (old, new))
                self.conn.execute("UPDATE campaigns SET renamed_to = ? WHERE id = ?", (new, old))
            for campaign, old, new in step_renames:
                self.conn.execute(f"UPDATE sends SET step_id = ? WHERE campaign = ? AND step_id = ? AND "
                                  f"{_FREE_STEP_ID}", (new, campaign, old, new))
                self.conn.execute("DELETE FROM campaign_steps WHERE campaign = ? AND step_id = ?", (campaign, old))
            for campaign, steps in states.items():
                self.conn.executemany(
                    "INSERT INTO campaign_steps (campaign, step_id, position, template, retired, unresolved, "
                    "first_seen) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(campaign, step_id) DO UPDATE SET "
                    "position = excluded.position, template = excluded.template, retired = excluded.retired, "
                    "unresolved = excluded.unresolved",
                    [(campaign, k, st.position, st.template, int(st.retired),
                      json.dumps(list(st.unresolved)) if st.unresolved else None, iso(now))
                     for k, st in steps.items()])
                known = self.conn.execute("SELECT step_id FROM campaign_steps WHERE campaign = ?",
                                          (campaign,)).fetchall()
                self.conn.executemany("DELETE FROM campaign_steps WHERE campaign = ? AND step_id = ?",
                                      [(campaign, k) for (k,) in known if k not in steps])

    # ------------------------------------------------------------ reading
    def sends(self, *, status: Iterable[SendStatus] | None = None, campaign: str | None = None) -> list[SendRow]:
        """Send rows, oldest first."""
        sql = f"SELECT {_SEND_COLS} FROM sends"
        cond, args = [], []
        if status is not None:  # literals, not parameters: SQLite uses a partial index only then (schema 6)
            st = [SendStatus(s).value for s in status]
            cond.append("0" if not st else f"status = '{st[0]}'" if len(st) == 1 else
                        f"status IN ({', '.join(repr(v) for v in st)})")
        if campaign is not None:
            cond.append("campaign = ?")
            args.append(campaign)
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        return [_send(*r) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def count_sends(self, status: SendStatus) -> int:
        """How many sends are in one status (the queue's depth after a pass)."""
        return int(self.conn.execute(f"SELECT COUNT(*) FROM sends WHERE status = '{SendStatus(status).value}'"
                                     ).fetchone()[0])

    def sent_message_ids(self, ids: Iterable[str]) -> dict[str, SentRef]:
        """Message-ID -> the send it was, for the ids the worker sent."""
        out: dict[str, SentRef] = {}
        for mid in ids:
            row = self.conn.execute("SELECT customer_key, campaign, step FROM sends WHERE message_id = ?",
                                    (mid,)).fetchone()
            if row:
                out[mid] = SentRef(row[0], row[1], row[2])
        return out

    def sent_count(self) -> int:
        """How many sends this log records as ``sent``: only ever grows (``sent`` is final, rows are never deleted).

        Sends in ``sending``/``uncertain`` are left out on purpose: crash
        recovery and ``requeue`` move them back to ``queued``.
        """
        return int(self.conn.execute("SELECT COUNT(*) FROM sends WHERE status = 'sent'").fetchone()[0])

    def has_sends(self, campaign: str) -> bool:
        """Whether the campaign has any ``sends`` row."""
        return self.conn.execute("SELECT 1 FROM sends WHERE campaign = ? LIMIT 1", (campaign,)).fetchone() is not None

    def has_sent(self) -> bool:
        """Whether this log has recorded any message as sent (cheaper than :meth:`sent_count`)."""
        return self.conn.execute("SELECT 1 FROM sends WHERE status = 'sent' LIMIT 1").fetchone() is not None

    # ------------------------------------------------------------ the lifecycle
    def queue_sends(self, rows: Sequence[Mapping[str, object]]) -> int:
        """Insert planned sends (queued or skipped) in one transaction; existing keys are left alone."""
        with self.transaction():
            return insert_sends(self.conn, rows)

    def mark_sent(self, send_id: int, now: datetime, *, customer_key: str | None, campaign: str, step: int,
                  message_id: str, subject: str, body: str, source: str) -> None:
        """Sending -> sent, with the email_out activity, in one transaction."""
        with self.transaction():
            write_sent(self.conn, Sent(send_id, now, customer_key, campaign, step, message_id, subject, body,
                                        source))

    def mark_retry(self, send_id: int, error: str, next_attempt: datetime) -> None:
        """Sending -> queued after a 4xx answer: retried at ``next_attempt``."""
        with self.transaction():
            self.conn.execute("UPDATE sends SET status = 'queued', error = ?, next_attempt_at = ? WHERE id = ?",
                              (error, iso(next_attempt), send_id))

    def mark_failed(self, send_id: int, error: str, now: datetime, *, customer_key: str, campaign: str,
                    step: int) -> None:
        """A 5xx answer or a message that cannot be built: failed, with a send_failed activity."""
        with self.transaction():
            self.conn.execute("UPDATE sends SET status = 'failed', error = ? WHERE id = ?", (error, send_id))
            insert_activity(self.conn, kind=Kind.SEND_FAILED.value, occurred_at=now, now=now,
                            customer_key=customer_key, campaign=campaign, step=step, source="outbound",
                            details={"error": error})

    def mark_status(self, send_id: int, status: SendStatus, error: str | None = None, *,
                    sent_at: datetime | None = None) -> None:
        """Set a send's status directly (crash recovery, a send found blocked at hand-over, ``uncertain``)."""
        with self.transaction():
            self.conn.execute("UPDATE sends SET status = ?, error = ?, sent_at = COALESCE(?, sent_at) WHERE id = ?",
                              (status.value, error, iso(sent_at) if sent_at else None, send_id))

    def requeue_problems(self, ids: list[int], statuses: tuple[str, ...]) -> list[str]:
        """Why some of ``ids`` cannot be requeued: unknown ids, or sends not in one of ``statuses``."""
        out = []
        for i in ids:
            row = self.conn.execute("SELECT status, campaign, step, customer_key FROM sends WHERE id = ?",
                                    (i,)).fetchone()
            if row is None:
                out.append(f"send #{i} does not exist (`crm-automation report --json` lists the ids of sends "
                           "that need attention)")
            elif row[0] not in statuses:
                out.append(f"send #{i} ({row[1]}/{row[2]} to {row[3]}) is {row[0]}, not "
                           f"{' or '.join(statuses)}: nothing to requeue")
        return out

    def requeue(self, ids: list[int] | None,
                statuses: tuple[str, ...] = (SendStatus.UNCERTAIN, SendStatus.FAILED)) -> int:
        """Put uncertain/failed sends back in the queue on purpose (the admin's decision)."""
        with self.transaction():
            if ids:
                q = ",".join("?" * len(ids))
                cur = self.conn.execute(
                    f"UPDATE sends SET status = 'queued', next_attempt_at = NULL WHERE id IN ({q}) "
                    f"AND status IN ({','.join('?' * len(statuses))})", (*ids, *statuses))
            else:
                cur = self.conn.execute(
                    f"UPDATE sends SET status = 'queued', next_attempt_at = NULL "
                    f"WHERE status IN ({','.join('?' * len(statuses))})", statuses)
        return cur.rowcount
