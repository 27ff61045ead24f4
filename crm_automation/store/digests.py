"""Owner digests (issue #21): what the digest planning and its contents read; records, decides nothing.

A digest is a ``sends`` row of kind ``owner_digest`` (campaign label
``owner-digest``, ``step_id`` the local date, ``customer_key`` the owner's
address): its key is the unique (campaign, step_id, customer_key) index
every kind shares, and its lifecycle the one in :mod:`crm_automation.store.sends`.
Every query here names the label, so it reads that index's prefix and never
the rest of ``sends`` (the send loop's indexes are untouched).

The events a digest reports are activities by the time the log learnt of
them (``logged_at``): a reply fetched today from a message dated last week is
news today, and a digest's window (its owner's last digest, this one] never
counts an activity twice or misses one.
"""

from __future__ import annotations

from datetime import datetime

from crm_automation.models import SendStatus
from crm_automation.store.activities import _ACTIVITY_COLS, Activity, _activity
from crm_automation.store.connection import Connection, iso, parse_iso
from crm_automation.store.schema import EVENT_KINDS_SQL, LOGGED_AT_SQL
from crm_automation.store.sends import _SEND_COLS, DIGEST_LABEL, SendRow, _send

_LABEL = f"'{DIGEST_LABEL}'"  # a literal: the unique index's prefix


class DigestLog(Connection):
    """The store's part the owner digests read (the rules are ``owner_digest.py``'s and ``app/digest.py``'s)."""

    def digest_planned(self, day: str) -> bool:
        """Whether the digests of this local day (``YYYY-MM-DD``) were planned: any owner's row of that day exists."""
        return self.conn.execute(f"SELECT 1 FROM sends WHERE campaign = {_LABEL} AND step_id = ? LIMIT 1",
                                 (day,)).fetchone() is not None

    def digest_sends(self, status: SendStatus | None = None) -> list[SendRow]:
        """The digests' rows (in one status when given), oldest first."""
        cond = f" AND status = '{SendStatus(status).value}'" if status is not None else ""
        return [_send(*r) for r in self.conn.execute(
            f"SELECT {_SEND_COLS} FROM sends WHERE campaign = {_LABEL}{cond} ORDER BY id")]

    def last_digests(self) -> dict[str, datetime]:
        """Owner address -> when their latest digest that was sent was planned (``queued_at``: its window's end)."""
        return {k: t for k, at in self.conn.execute(
            f"SELECT customer_key, MAX(queued_at) FROM sends WHERE campaign = {_LABEL} AND status = 'sent' "
            "GROUP BY customer_key") if (t := parse_iso(at)) is not None}

    def digest_events(self, after: datetime, upto: datetime, owner_field: str | None
                      ) -> list[tuple[Activity, datetime]]:
        """(activity, when it was logged) of the activities logged in (``after``, ``upto``] a digest reports, in order.

        Replies, bounces and unsubscribes (from schema 8's index of events by
        logged time), customers added, and changes of ``owner_field`` (a
        customer given to an owner). Customers' activities only.
        """
        a, b = iso(after), iso(upto)
        cols = f"{_ACTIVITY_COLS}, {LOGGED_AT_SQL}"
        rows = list(self.conn.execute(
            f"SELECT {cols} FROM activities WHERE kind IN {EVENT_KINDS_SQL} AND kind IN "
            f"('email_in', 'bounce', 'unsubscribe') AND {LOGGED_AT_SQL} > ? AND {LOGGED_AT_SQL} <= ? "
            "AND customer_key IS NOT NULL", (a, b)))
        rows += self.conn.execute(
            f"SELECT {cols} FROM activities WHERE kind = 'customer_added' AND {LOGGED_AT_SQL} > ? "
            f"AND {LOGGED_AT_SQL} <= ? AND customer_key IS NOT NULL", (a, b))
        if owner_field is not None:
            rows += self.conn.execute(
                f"SELECT {cols} FROM activities WHERE kind = 'field_changed' "
                f"AND {self.dialect.json_text('details', 'field')} = ? AND customer_key IS NOT NULL "
                f"AND {LOGGED_AT_SQL} > ? AND {LOGGED_AT_SQL} <= ?", (owner_field, a, b))
        rows.sort(key=lambda r: r[0])
        return [(_activity(*r[:-1]), parse_iso(r[-1]) or upto) for r in rows]

    def follow_ups_sent_since(self, since: datetime) -> list[tuple[str, str, str, str]]:
        """Campaign follow-ups (a step after the first) handed over since ``since``: a digest's "sent today".

        (customer, campaign, step key, sent at as the log's ISO text), in
        order; the four columns only (the step key is ``step_id``, or the
        step's place for a row from before schema 4): a busy morning hands
        over tens of thousands, and whole rows cost 1 s to make at 40,000.
        """
        return self.conn.execute(
            "SELECT customer_key, campaign, COALESCE(step_id, CAST(step AS TEXT)), sent_at FROM sends "
            "WHERE status = 'sent' AND sent_at >= ? AND kind = 'campaign_step' AND step > 0 ORDER BY sent_at, id",
            (iso(since),)).fetchall()
