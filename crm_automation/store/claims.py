"""The hand-over: sends claimed by one worker, marked ``sending`` under the rate limits (issue #20, stage 2).

Several workers may share one PostgreSQL log. A worker no longer reads the
queue once and hands it over: it **claims** a small batch (``sends.holder``
= its name, status still ``queued``) with one statement, in which
PostgreSQL's ``FOR UPDATE SKIP LOCKED`` lets a second claimer pass the rows
a first one is claiming instead of waiting for them (the pattern Odoo's
cron moved to, odoo#48146 / PR #62124). SQLite runs the same text without
the locking clause: ``BEGIN IMMEDIATE`` already serialises writers. A row
held by a worker that is no longer alive (``workers.stopped_at`` set: fleet
reaps the dead) may be claimed again; a live worker's never.

Exactly-once does not rest on claims or heartbeats: it rests on
:meth:`ClaimLog.mark_sending`'s conditional update (``status = 'queued'
AND holder = :me``), committed before the message can be delivered. A
claim only says who may try.

Rate limits (``max_per_minute``, ``max_per_day``) are counted in the
transaction that marks a send ``sending``, keyed by ``sends.account`` (NULL:
``[outbound]``'s own account). On PostgreSQL that transaction first takes a
transaction advisory lock on the workspace's rate key for that account, so
two workers cannot both count the last free slot; SQLite's write lock does
the same. The limits' rule is the caller's (:class:`Rate`): the store counts
and applies its answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from crm_automation.store.connection import Connection, Driver, Rows, iso, parse_iso
from crm_automation.store.sends import _SEND_COLS, Claim, Gate, SendRow, Sent, _send, write_sent
from crm_automation.store.tracking import insert_links

# Who may claim a queued send: nobody holds it, this worker does (an earlier pass of it, or a batch it did not
# finish), or its holder is not alive. ``workers.id`` is a primary key (never NULL), so NOT IN is plain.
_CLAIMABLE = ("(holder IS NULL OR holder = :me OR holder NOT IN "
              "(SELECT w.id FROM workers w WHERE w.stopped_at IS NULL))")
# Due: never tried, or its 4xx retry time (dispatch.retry_at) has come.
_DUE = "(next_attempt_at IS NULL OR next_attempt_at <= :now OR attempts = 0)"
# The claim: one statement. ``id > :after`` keeps a pass's claims moving forward through the queue (the partial
# index idx_sends_queued is by id), so held or not-yet-due rows are read once a pass, not once a batch.
_CLAIM = ("UPDATE sends SET holder = :me WHERE id IN (SELECT id FROM sends WHERE status = 'queued' AND id > :after "
          f"AND {_DUE} AND {_CLAIMABLE}{{held}} ORDER BY id LIMIT :n{{lock}}) RETURNING {_SEND_COLS}")
# Hand-overs of one account since :since (sent, sending, uncertain: what a provider may have counted), counted
# per status so each part reads its partial index and only counts; 'sent' rows on idx_sends_sent (sent_at,
# campaign, account; schema 14) alone. {op}: ``>=`` for the day, ``>`` for the minute.
_COUNT = ("SELECT SUM(n) FROM ("
          "SELECT COUNT(*) AS n FROM sends WHERE status = 'sent' AND sent_at {op} :since AND {acct} UNION ALL "
          "SELECT COUNT(*) FROM sends WHERE status = 'sending' AND COALESCE(sent_at, next_attempt_at) {op} :since "
          "AND {acct} UNION ALL SELECT COUNT(*) FROM sends WHERE status = 'uncertain' AND "
          "COALESCE(sent_at, next_attempt_at) {op} :since AND {acct}) AS h")
# The default account's rows are NULL (``IS NULL``: cheaper on the index than COALESCE), another's named.
_ACCOUNT = {True: "account IS NULL", False: "account = :account"}
_DAY = {default: _COUNT.format(op=">=", acct=a) for default, a in _ACCOUNT.items()}
_MINUTE = {default: _COUNT.format(op=">", acct=a) for default, a in _ACCOUNT.items()}
# The last minute's hand-over times: ``> :since``, as dispatch.pace_wait drops a time at exactly a minute ago.
_MINUTE_TIMES = {default: (
    f"SELECT t FROM (SELECT sent_at AS t FROM sends WHERE status = 'sent' AND sent_at > :since AND {a} UNION ALL "
    "SELECT COALESCE(sent_at, next_attempt_at) FROM sends WHERE status IN ('sending', 'uncertain') AND "
    f"COALESCE(sent_at, next_attempt_at) > :since AND {a}) AS h") for default, a in _ACCOUNT.items()}


@dataclass(frozen=True, slots=True)
class Rate:
    """An account's sending limits, applied in the transaction that marks a send ``sending`` (issue #20).

    ``rule`` is the caller's (:func:`crm_automation.send.dispatch.rate_block`):
    (hand-overs in the last minute, in the last 24 hours) -> why not now, or
    None. ``per_day`` says how far back to count (0: only the last minute;
    neither: no count at all, nothing read). ``account``: ``sends.account``
    (None: ``[outbound]``'s own).
    """

    account: str | None
    per_minute: int
    per_day: int
    rule: Callable[[int, int], str | None]
    # Several accounts are configured (issue #20 part 3): a hand-over through ``[outbound]``'s own (account None)
    # clears an account an earlier attempt of the same send recorded (a 4xx retry, a requeue), so the row names the
    # account that really sent it and is counted against that account's limits. False: nothing more is written.
    others: bool = False

    @property
    def counted(self) -> bool:
        """Whether any limit is set (else the hand-over reads and locks nothing)."""
        return bool(self.per_minute or self.per_day)


@dataclass(frozen=True, slots=True)
class RecentHandOvers:
    """One account's hand-overs, as the log has them now: the last minute's times, and the last day's count."""

    minute: list[datetime]
    day: int


def _held(held: Sequence[str], args: dict[str, object]) -> str:
    """``AND campaign NOT IN (...)`` for the campaigns held this pass (their sends stay queued, unclaimed)."""
    names = [f"h{i}" for i in range(len(held))]
    args.update(zip(names, held, strict=True))
    return f" AND campaign NOT IN ({', '.join(':' + n for n in names)})" if names else ""


class ClaimLog(Connection):
    """The store's part that claims sends for one worker and marks them ``sending`` (table ``sends``)."""

    def claim_sends(self, me: str, now: datetime, n: int, *, held: Sequence[str] = (), after: int = 0
                    ) -> list[SendRow]:
        """Claim up to ``n`` queued, due sends for worker ``me`` (ids above ``after``, campaigns not ``held``).

        One statement, one commit. Status stays ``queued``; the rows'
        ``holder`` is ``me``. Returned in id order.
        """
        args: dict[str, object] = {"me": me, "now": iso(now), "n": n, "after": after}
        sql = _CLAIM.format(held=_held(held, args), lock=self.dialect.skip_locked)
        with self.transaction(pipelined=True):  # PostgreSQL: BEGIN and the claim in one round trip, COMMIT in one
            rows = self.conn.execute(sql, args).fetchall()
        return sorted((_send(*r) for r in rows), key=lambda s: s.id)

    def release_claims(self, me: str) -> int:
        """Let go of the queued sends ``me`` claimed and did not hand over (the pass ended): others may take them."""
        with self.transaction():
            return self.conn.execute("UPDATE sends SET holder = NULL WHERE holder = ? AND status = 'queued'",
                                     (me,)).rowcount

    def queue_counts(self, me: str, now: datetime, held: Sequence[str] = ()) -> tuple[int, int]:
        """(queued sends ``me`` could claim now, queued sends of the ``held`` campaigns) - one scan of the queue."""
        args: dict[str, object] = {"me": me, "now": iso(now)}
        not_held = _held(held, args)
        is_held = f"NOT ({not_held[5:]})" if held else "1 = 0"
        due, n_held = self.conn.execute(
            f"SELECT COALESCE(SUM(CASE WHEN {_DUE} AND {_CLAIMABLE}{not_held} THEN 1 ELSE 0 END), 0), "
            f"COALESCE(SUM(CASE WHEN {is_held} THEN 1 ELSE 0 END), 0) FROM sends WHERE status = 'queued'",
            args).fetchone()
        return int(due), int(n_held)

    def recent_hand_overs(self, account: str | None, now: datetime) -> RecentHandOvers:
        """One account's hand-overs: the last minute's times (oldest first) and the last 24 hours' count."""
        times = sorted(t for (s,) in self.conn.execute(
            _MINUTE_TIMES[account is None], {"since": iso(now - timedelta(minutes=1)), "account": account})
            if (t := parse_iso(s)) is not None)
        return RecentHandOvers(times, self._count(_DAY, now - timedelta(days=1), account))

    def _count(self, sql: dict[bool, str], since: datetime, account: str | None) -> int:
        n = self.conn.execute(sql[account is None], {"since": iso(since), "account": account}).fetchone()[0]
        return int(n or 0)

    def mark_sending(self, send_id: int, message_id: str, now: datetime, holder: str) -> bool:
        """Queued and claimed by ``holder`` -> sending, committed before the hand-over. False otherwise.

        The condition is what makes a send go once among several workers
        (issue #20): a row another worker claimed, or already marked, is not
        changed. The send pass calls it inside its own transaction, with the
        previous message's ``sent`` record: one commit a message (issue #5).
        Atomic by itself, so no savepoint on this hot path (see
        :func:`_mark_sending`). ``holder`` stays on the ``sending`` row:
        recovery leaves a live holder's alone.
        """
        same, other = _mark_sending(self.conn, send_id, message_id, now, holder, None)
        return same.rowcount + other.rowcount == 1

    def mark_sent_and_sending(self, sent: Sent | None, send_id: int, message_id: str, now: datetime, holder: str,
                              gate: Gate | None = None, *, links: Sequence[str] = (), rate: Rate | None = None
                              ) -> Claim:
        """Record the last message's ``sent`` and mark the next ``sending``, in one commit (issue #5).

        The same two writes as ``mark_sent`` and :meth:`mark_sending`,
        without a savepoint between them: the send loop's one commit a message.
        With a ``gate``, the next message's address and its customer's email
        status are read in the same transaction (two primary-key lookups, one
        statement) and its rule applied: a send blocked now is recorded
        ``skipped`` with the rule's reason instead (issue #19: a suppression
        committed by another process a moment ago is seen here, since
        ``BEGIN IMMEDIATE`` reads the latest commit).

        With a ``rate`` that sets a limit, the account's hand-overs are
        counted here, under the rate lock (issue #20): a send over a limit
        stays queued and claimed (:attr:`Claim.LIMITED`). ``links``: the next
        message's tracked links (issue #19), recorded with its ``sending`` mark.

        Pipelined (issue #20, PostgreSQL one worker within 1.5x of SQLite):
        the writes whose answers nothing waits for (the rate lock, the
        ``sent`` record) go with the reads the rule needs (the gate's row,
        the counts), answered together: one round trip; the mark (or the
        skip) and the commit: a second. The mark's row count is read after
        the commit was answered, so ``SENDING`` is only ever returned for a
        mark already durable. Links are written only where the mark went
        through, so with links the mark's answer is waited for first (a
        third round trip, for messages with tracked links only).
        """
        counts: tuple[Rows | None, Rows | None] | None = None
        changed: tuple[Rows, ...] = ()
        result = Claim.SENDING
        with self.transaction(pipelined=True):
            if rate is not None and rate.counted and (lock := self.dialect.rate_lock) is not None:
                self.conn.execute(lock, (rate.account or "",))  # before any row of this transaction is written
            if sent is not None:
                write_sent(self.conn, sent)
            if rate is not None and rate.counted:
                counts = self._counts(rate, now)
            why = None
            if gate is not None:
                suppressed, status = self.conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM suppressions WHERE email = ?), "
                    "(SELECT email_status FROM customers WHERE key = ?)",
                    (gate.email.strip().lower(), gate.customer_key)).fetchone()
                why = gate.rule(bool(suppressed), status)
            if why is not None:
                changed = (self.conn.execute("UPDATE sends SET status = 'skipped', error = ? WHERE id = ? AND "
                                             "status = 'queued'", (why, send_id)),)
                result = Claim.BLOCKED
            elif rate is not None and counts is not None and _over(rate, counts):
                result = Claim.LIMITED
            else:
                changed = _mark_sending(self.conn, send_id, message_id, now, holder,
                                        rate.account if rate is not None else None,
                                        set_account=rate is not None and (rate.account is not None or rate.others),
                                        returning=bool(links))
                if links:  # only with the mark: its answer is waited for here (a round trip, links only)
                    if sum(len(c.fetchall()) for c in changed) != 1:
                        return Claim.NOT_QUEUED
                    insert_links(self.conn, send_id, links)
                    changed = ()
        if changed and sum(c.rowcount for c in changed) != 1:
            return Claim.NOT_QUEUED
        return result

    def _counts(self, rate: Rate, now: datetime) -> tuple[Rows | None, Rows | None]:
        """The account's hand-overs in the last minute and day (None: that limit is not set), read by :func:`_over`.

        Sent at once, read later: on PostgreSQL they ride with the gate's read.
        """
        args = {"account": rate.account}
        minute = self.conn.execute(_MINUTE[rate.account is None], {**args, "since": iso(now - timedelta(minutes=1))}
                                   ) if rate.per_minute else None
        day = self.conn.execute(_DAY[rate.account is None], {**args, "since": iso(now - timedelta(days=1))}
                                ) if rate.per_day else None
        return minute, day


def _over(rate: Rate, counts: tuple[Rows | None, Rows | None]) -> bool:
    """Whether ``rate``'s rule refuses one more hand-over, given the counts :meth:`ClaimLog._counts` sent."""
    minute, day = (0 if c is None else int(c.fetchone()[0] or 0) for c in counts)
    return rate.rule(minute, day) is not None


def _mark_sending(conn: Driver, send_id: int, message_id: str, now: datetime, holder: str, account: str | None,
                  *, set_account: bool = False, returning: bool = False) -> tuple[Rows, Rows]:
    """Queued and claimed by ``holder`` -> sending; the two statements' answers (their row counts sum to 0 or 1).

    ``account``: the SMTP account it goes through (``sends.account``; None:
    ``[outbound]``'s own), written by the mark itself when ``set_account``
    (several accounts are configured, issue #20 part 3: a hand-over through
    ``[outbound]``'s own then clears an account an earlier attempt recorded,
    so the row is counted against the account that really sent it); else
    the column is left as it is.
    ``returning``: each hands back the row's id when it marked it, for a
    caller that must know before its next statement (rows can be waited
    for inside a pipeline; a row count only after it; SQLite wants a
    ``RETURNING`` statement's rows read before the ``COMMIT``).

    The Message-ID was chosen when the send was queued: left out of the SET
    when it is the same, so the index on it is not rewritten (a random leaf
    page, a WAL page of every commit, issue #18); the second statement sets
    it where it differs (or none was queued). Their conditions exclude each
    other, so both are sent without waiting for the first one's answer
    (issue #20: one round trip on PostgreSQL); on SQLite the second is a
    primary-key look-up that finds nothing.
    """
    at = iso(now)
    tail = " RETURNING id" if returning else ""
    same = conn.execute(
        "UPDATE sends SET status = 'sending', attempts = attempts + 1, next_attempt_at = ?, "
        "account = CASE WHEN ? THEN ? ELSE account END WHERE id = ? AND status = 'queued' AND holder = ? "
        "AND message_id = ?" + tail, (at, set_account, account, send_id, holder, message_id))
    other = conn.execute(
        "UPDATE sends SET status = 'sending', message_id = ?, attempts = attempts + 1, next_attempt_at = ?, "
        "account = CASE WHEN ? THEN ? ELSE account END WHERE id = ? AND status = 'queued' AND holder = ? "
        "AND (message_id IS NULL OR message_id <> ?)" + tail,
        (message_id, at, set_account, account, send_id, holder, message_id))
    return same, other
