"""Fetched mail: each message's decision applied in one transaction with the folder's cursor (SPEC §9).

Why a module of its own: applying a decision writes four records — the
activities (:mod:`.activities`), the suppressions and email statuses its
effects cause (:mod:`.suppressions`, :mod:`.customers`), an owner
notification to send (:mod:`.sends`) — and the cursor that says the message
is done. They must commit together, so a kill at any instant neither loses
nor repeats a message; this module sits above the others and uses their
building blocks inside its one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime

from crm_automation.errors import LogConflictError
from crm_automation.models import (
    ActivityRecord,
    BounceDetails,
    Cursor,
    Decision,
    EmailStatus,
    InboundDetails,
    Kind,
    SuppressionReason,
    details_of,
)
from crm_automation.store.activities import (
    INSERT_ACTIVITY_SQL,
    activity_row,
    already_logged,
    count_soft_bounces,
    insert_activities,
    insert_quarantine,
    inserted_id,
    logged_digests,
    logged_replies,
)
from crm_automation.store.connection import Connection, Driver, iso
from crm_automation.store.customers import update_email_status
from crm_automation.store.schema import INBOUND_KINDS_SQL
from crm_automation.store.sends import SentRef, insert_sends, notification_row
from crm_automation.store.suppressions import insert_suppression, read_suppressions

# How often a batch is applied when the server rolls it back for waiting on another worker's (issue #20).
TRIES = 3


# A folder's cursor never moves back under the same UIDVALIDITY: two workers (issue #20) may commit batches of
# one folder out of order (the later UIDs first), and the earlier batch must not rewind the cursor past what the
# later one logged (it would cost a re-read). A new UIDVALIDITY (the folder was rebuilt) sets it as given.
_SET_CURSOR = (
    "INSERT INTO mailbox_state (folder, uidvalidity, last_uid, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(folder) DO UPDATE SET uidvalidity = excluded.uidvalidity, last_uid = CASE WHEN "
    "mailbox_state.uidvalidity = excluded.uidvalidity AND mailbox_state.last_uid > excluded.last_uid THEN "
    "mailbox_state.last_uid ELSE excluded.last_uid END, updated_at = excluded.updated_at")


def _set_cursor(conn: Driver, folder: str, uidvalidity: int, last_uid: int, now: datetime) -> None:
    conn.execute(_SET_CURSOR, (folder, uidvalidity, last_uid, iso(now)))


def _key(kind: str, message_id: str, digest: str | None) -> tuple[str, str | None]:
    """An activity's unique key as its index has it.

    ``reply_out`` by Message-ID alone (schema 9), inbound mail by (Message-ID, digest) (schema 3).
    """
    return (message_id, None) if kind == Kind.REPLY_OUT.value else (message_id, digest)


class _Batch:
    """One batch's inserts: the Message-IDs' logged digests read once, plain activities written together.

    Why (issue #13): a lookup and an insert per message were most of the
    log's share of a large fetch. An activity with effects (a suppression,
    a soft-bounce score, an owner's note) is written at once, after the
    plain ones before it, so ids still follow mailbox order and the score
    counts every earlier bounce.

    Why the outcome is the insert's (issue #20): the digests read first only
    spare inserts of what is long logged (and honour rows from before
    digests, which no index can). Whether a message is logged *now* is what
    its ``INSERT ... ON CONFLICT DO NOTHING`` hands back: under PostgreSQL's
    READ COMMITTED another worker may insert the same message between our
    read and our insert, and the insert then waits for its commit and does
    nothing. ``logged[i]`` is decision ``i``'s answer.
    """

    def __init__(self, conn: Driver, decisions: Sequence[Decision]) -> None:
        self.conn = conn
        self.known = logged_digests(conn, {a.message.message_id for d in decisions for a in d.activities
                                           if a.kind is not Kind.REPLY_OUT})
        # issue #21: our replies from the Sent folder, once per Message-ID (apart from inbound mail: a copy of
        # our reply that reached the inbox under the same id is another record)
        self.replies = logged_replies(conn, {a.message.message_id for d in decisions for a in d.activities
                                             if a.kind is Kind.REPLY_OUT})
        self.rows: list[tuple[object, ...]] = []
        self.waiting: dict[tuple[str, str | None], int] = {}  # a waiting row's key -> its decision's index
        self.logged = [False] * len(decisions)

    def is_new(self, a: ActivityRecord) -> bool:
        """Not logged before and not earlier in this batch (so each waiting row's key is unique)."""
        mid = a.message.message_id
        if a.kind is Kind.REPLY_OUT:
            if mid in self.replies:
                return False
            self.replies.add(mid)
            return True
        seen = self.known.setdefault(mid, set())
        if already_logged(seen, a.digest):
            return False
        seen.add(a.digest)
        return True

    def add(self, i: int, a: ActivityRecord, row: tuple[object, ...]) -> None:
        """A plain activity of decision ``i``, written at the next :meth:`flush`."""
        self.rows.append(row)
        self.waiting[_key(a.kind.value, a.message.message_id, a.digest)] = i

    def flush(self) -> None:
        """Write the waiting rows; each decision whose row went in is logged."""
        if not self.rows:
            return
        for kind, mid, digest in insert_activities(self.conn, self.rows):
            self.logged[self.waiting[_key(kind, mid, digest)]] = True
        self.rows = []
        self.waiting = {}


def _apply(batch: _Batch, i: int, d: Decision, now: datetime) -> None:
    """Decision ``i``'s records (inside the caller's transaction); ``batch.logged[i]`` says if any went in."""
    conn = batch.conn
    q = d.quarantine
    if q is not None and insert_quarantine(conn, source=q.source, raw=q.raw, error=q.error, now=now,
                                           from_addr=q.from_addr, customer_key=q.customer_key, size=q.size):
        batch.logged[i] = True
    for a in d.activities:
        if not batch.is_new(a):
            continue
        m = a.message
        row = activity_row(kind=a.kind.value, occurred_at=a.occurred_at, now=now, customer_key=a.customer_key,
                           subject=m.subject, body=m.reply, message_id=m.message_id, in_reply_to=m.in_reply_to,
                           campaign=a.campaign, step=a.step, source=a.source, details=a.details.to_dict(),
                           digest=a.digest)
        if not a.effects and a.scored is None and a.notify_owner is None:
            batch.add(i, a, row)
            continue
        batch.flush()
        aid = inserted_id(conn, INSERT_ACTIVITY_SQL, row)
        if aid is None:  # another worker logged it first (issue #20): its effects and owner's note are theirs
            continue
        batch.logged[i] = True
        _caused(conn, a, now)
        if a.notify_owner is not None and a.customer_key is not None:
            owner, mid = a.notify_owner
            insert_sends(conn, [notification_row(aid, a.customer_key, owner, mid, now)])


def _caused(conn: Driver, a: ActivityRecord, now: datetime) -> None:
    """Apply the effects decided for a new activity, and the soft-bounce score's (issue #11).

    The score's count is read here, inside the transaction and after the
    bounce was inserted (it includes the earlier bounces of the batch), under
    the address's lock (:attr:`~crm_automation.store.dialect.Dialect.address_lock`,
    issue #20: it includes another worker's too); what that count causes is
    the pure rule's answer (``a.scored.rule``), not ours.
    """
    for eff, key in a.effects:
        insert_suppression(conn, eff.email, eff.reason, eff.source, now)
        if eff.status and key is not None:
            update_email_status(conn, key, eff.status)
    if a.scored is not None:
        if (lock := conn.dialect.address_lock) is not None:  # another worker's bounce of it: counted after its commit
            conn.execute(lock, (a.scored.address,))
        n = count_soft_bounces(conn, a.scored.address, a.customer_key, now - a.scored.window)
        for eff in a.scored.rule(n):
            insert_suppression(conn, eff.email, eff.reason, eff.source, now)
            if eff.status and a.customer_key is not None:
                update_email_status(conn, a.customer_key, eff.status)


class InboundLog(Connection):
    """The store's part that records fetched mail (tables ``mailbox_state`` and ``maildir_seen``)."""

    def mailbox_cursor(self, folder: str) -> Cursor | None:
        """Where ``folder`` was read up to (UIDVALIDITY, last UID), or None before the first fetch.

        The Maildir names already logged are not loaded here (:meth:`maildir_seen`).
        """
        row = self.conn.execute("SELECT uidvalidity, last_uid FROM mailbox_state WHERE folder = ?",
                                (folder,)).fetchone()
        return Cursor(row[0], row[1]) if row else None

    def set_cursor(self, folder: str, uidvalidity: int, last_uid: int, now: datetime) -> None:
        """Move a folder's cursor (inside the caller's transaction when it logs the message)."""
        with self.transaction():
            _set_cursor(self.conn, folder, uidvalidity, last_uid, now)

    def maildir_seen(self, folder: str) -> frozenset[str]:
        """Base names of the Maildir files of ``folder`` already logged or quarantined."""
        return frozenset(n for (n,) in self.conn.execute("SELECT name FROM maildir_seen WHERE folder = ?",
                                                          (folder,)))

    def send_for_token(self, token: str) -> SentRef | None:
        """The send whose ``Message-ID`` has ``token`` as its local part, or None (issue #17).

        An unsubscribe request names its send by this token
        (:mod:`crm_automation.tokens`). Looked up by the prefix ``<token@``
        as a range of the ``sends.message_id`` index, so a From domain
        changed since the send (the domain of every Message-ID we wrote) still
        finds it, in one indexed step. Owner notifications are not campaign
        mail and carry no unsubscribe link: never theirs. Two sends under
        one token (never written by us: the token is a random UUID) name
        nobody.
        """
        if not token or "@" in token or "<" in token or ">" in token:
            return None
        # The rows made distinct here, not by SQL's DISTINCT: that builds a temporary table for every lookup, a
        # cost each one-click POST paid (issue #19); the range holds one row, or a handful at worst.
        rows = {tuple(r) for r in self.conn.execute(
            "SELECT customer_key, campaign, step FROM sends WHERE message_id >= ? AND message_id < ? "
            "AND kind = 'campaign_step'", (f"<{token}@", f"<{token}A"))}
        if len(rows) != 1:
            return None
        ((key, campaign, step),) = rows
        return SentRef(key, campaign, step)

    def record_unsubscribe(self, email: str, source: str, now: datetime, *, customer_key: str, campaign: str,
                           step: int, status: EmailStatus | None, details: InboundDetails) -> bool:
        """Record an unsubscribe link's request (issue #19): the suppression, the status, the activity, as one unit.

        False, and nothing written, when ``email`` was on the suppression list
        already. Otherwise ``email`` is suppressed as ``unsubscribed`` with
        ``source``, the customer's email status set to ``status`` (None: left
        as it is) and an ``unsubscribe`` activity logged against the send's
        campaign and step. Why one method rather than ``suppress``,
        ``set_email_status`` and ``add_activity``: each of those is a unit of
        its own, a savepoint inside the caller's transaction, and a one-click
        POST paid three of them (six statements of its eighteen) on top of its
        own; here the three writes share one.
        """
        with self.transaction():
            if not insert_suppression(self.conn, email, SuppressionReason.UNSUBSCRIBED, source, now):
                return False
            if status is not None:
                update_email_status(self.conn, customer_key, status)
            # No RETURNING (insert_activity's, for the id): nobody needs this row's id, and SQLite builds a
            # temporary table to return one.
            self.conn.execute(INSERT_ACTIVITY_SQL, activity_row(
                kind=Kind.UNSUBSCRIBE.value, occurred_at=now, now=now, customer_key=customer_key, subject=None,
                body=None, message_id=None, in_reply_to=None, campaign=campaign, step=step,
                source="unsubscribe link", details=details.to_dict(), digest=None))
        return True

    def apply_inbound(self, d: Decision, now: datetime) -> bool:
        """Record one fetched message's decision and move the folder's cursor, in one transaction.

        Returns whether anything new was recorded (False: every activity was
        already logged, and a quarantined message already kept). Effects,
        the soft-bounce score (issue #11) and an owner notification apply
        only to activities this call inserted (issue #20: not to one another
        worker inserted first).
        """
        return self.apply_inbound_many([d], now)[0]

    def apply_inbound_many(self, decisions: Sequence[Decision], now: datetime) -> list[bool]:
        """Record several fetched messages (in mailbox order) and their folders' cursors, in one transaction.

        Why a batch (issue #13): a commit per message was a fifth of a large
        fetch. Exactly-once holds as for one message: the messages and the
        cursor past the last of them commit together or not at all, so a
        kill re-reads the whole batch and logs each message once. Later
        decisions see the earlier ones' rows (one connection), so a message
        delivered twice within a batch is still logged once.

        Several workers (issue #20): each row goes in with ``ON CONFLICT DO
        NOTHING`` on its unique index and counts as logged only when the
        insert hands it back, so whatever the isolation and whatever another
        worker committed meanwhile, each message is logged, counted and
        forwarded to its owner once. Two workers inserting the same messages
        in different orders (one fetched from two folders at once) may wait
        for each other; PostgreSQL then rolls one back, which applies its
        batch again (:data:`TRIES` times at most; inside a caller's
        transaction the caller decides).
        """
        attempt = 1
        while True:
            try:
                return self._apply_many(decisions, now)
            except LogConflictError:
                if attempt >= TRIES or self.conn.in_transaction:
                    raise
                attempt += 1

    def _apply_many(self, decisions: Sequence[Decision], now: datetime) -> list[bool]:
        conn = self.conn
        cursors: dict[str, tuple[int, int]] = {}
        seen: list[tuple[str, str]] = []
        with self.transaction():
            batch = _Batch(conn, decisions)
            for i, d in enumerate(decisions):
                _apply(batch, i, d, now)
                cursors[d.folder] = (d.uidvalidity, d.uid)
                if d.seen_key is not None:
                    seen.append((d.folder, d.seen_key))
            batch.flush()
            for folder, (uidvalidity, uid) in cursors.items():
                _set_cursor(conn, folder, uidvalidity, uid, now)
            if seen:
                conn.executemany("INSERT INTO maildir_seen (folder, name) VALUES (?, ?) ON CONFLICT DO NOTHING", seen)
        return batch.logged

    def relink_inbound(self, index: dict[str, str], now: datetime, *,
                       status_of: Callable[[str], EmailStatus | None]) -> int:
        """Attach inbound activities and quarantined messages logged without a customer, by address (issue #9).

        ``index`` maps address -> customer key. Called after a sync that
        added customers: a lead who wrote before being added to the sheet
        gets that enquiry in their history, so a ``new`` campaign can see it
        and follow-ups stop. The activity is updated (``details.matched_by``
        says when and how), not logged again. An address suppressed while it
        was unknown gives the customer the email status ``status_of`` its
        reason (the pure core's rule, :func:`crm_automation.effects.status_for`).
        """
        rows = self.conn.execute(
            f"SELECT id, kind, details FROM activities WHERE customer_key IS NULL AND kind IN {INBOUND_KINDS_SQL}"
        ).fetchall()
        qrows = self.conn.execute(
            "SELECT id, from_addr FROM quarantine WHERE customer_key IS NULL AND from_addr IS NOT NULL").fetchall()
        if not rows and not qrows:
            return 0
        how = f"address, when the customer was added ({iso(now)})"
        linked: set[str] = set()
        n = 0
        with self.transaction():
            for aid, kind, text in rows:
                raw = json.loads(text or "{}")
                key = next((k for a in _addresses(Kind(kind), details_of(Kind(kind), raw))
                            if (k := index.get(a.lower())) is not None), None)
                if key is None:
                    continue
                # Only matched_by changes: the rest of the row's JSON is kept as written, whatever its version.
                raw["matched_by"] = how
                self.conn.execute("UPDATE activities SET customer_key = ?, details = ? WHERE id = ?",
                                  (key, json.dumps(raw, ensure_ascii=False), aid))
                linked.add(key)
                n += 1
            for qid, addr in qrows:
                key = index.get(str(addr).lower())
                if key is not None:
                    self.conn.execute("UPDATE quarantine SET customer_key = ? WHERE id = ?", (key, qid))
                    n += 1
            for addr, s in read_suppressions(self.conn).items():
                key = index.get(addr)
                if key in linked and (status := status_of(s.reason)) is not None:
                    update_email_status(self.conn, key, status)
        return n


def _addresses(kind: Kind, d: object) -> tuple[str, ...]:
    """The addresses an unlinked inbound activity is linked by.

    A bounce activity is one failed recipient's (issue #11): linked by that
    address only; rows logged before that name all of the report's
    recipients. Every other inbound activity: its sender.
    """
    if isinstance(d, BounceDetails):
        return d.addresses
    if isinstance(d, InboundDetails):
        return d.recipients if kind is Kind.BOUNCE else (d.from_addr,)
    return ()
