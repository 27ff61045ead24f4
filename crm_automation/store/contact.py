"""Contact times per customer and customer mail not yet followed by ours (issue #21): reads for ``contact.py``.

What counts as contact, stale, answered or waiting is decided in
:mod:`crm_automation.contact`; this part only reads the times those rules
need, for every customer at once. Each read is a few ``GROUP BY`` queries
over partial indexes (schema ``contact``: ``email_in``, ``reply_out`` and
``field_changed`` rows by customer and time), never a query per customer:
the digests and the pipeline report read 100,000 customers and 1,000,000
activities.

"Our email to a customer" is, in the log: a ``sent`` row of ``sends`` of
kind ``campaign_step`` (its ``sent_at``), or a ``reply_out`` activity (a
message of the team's found in the Sent folder). Owner notifications and
digests are other kinds of ``sends`` and are not read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from crm_automation.store.connection import Connection, iso, parse_iso
from crm_automation.store.dialect import Dialect
from crm_automation.store.schema import INBOUND_KINDS_SQL


# Our latest email to each customer: campaign steps sent, and the team's own replies (both with a customer).
# ``sends NOT INDEXED``: one scan of the table. SQLite otherwise walks idx_sends_customer for the GROUP BY and
# looks up every row for its status, 2.4x slower at 300,000 sends; a covering index would cost the send loop
# an index write per message (its 5% budget), so the scan it is.
def _last_out_sql(d: Dialect) -> str:
    return ("SELECT customer_key, MAX(t) AS t FROM ("
            f"SELECT customer_key, MAX(sent_at) AS t FROM {d.scan('sends')} WHERE status = 'sent' "
            "AND kind = 'campaign_step' GROUP BY customer_key "
            "UNION ALL SELECT customer_key, MAX(occurred_at) FROM activities WHERE kind = 'reply_out' "
            "AND customer_key IS NOT NULL GROUP BY customer_key) AS u GROUP BY customer_key")


@dataclass(frozen=True, slots=True)
class ContactTimes:
    """One customer's times: their latest mail to us, ours to them, the latest change of their stage field.

    ``stage_changed``: when a sync last logged a change of the stage field
    (None: never changed since they were first seen; see ``first_seen``).
    """

    last_in: datetime | None = None
    last_out: datetime | None = None
    stage_changed: datetime | None = None


@dataclass(frozen=True, slots=True)
class InboundMail:
    """A customer's reply or enquiry (an ``email_in`` activity) with what may have answered it.

    ``named_by_reply``: a ``reply_out`` of ours names its Message-ID in
    ``In-Reply-To``/``References``; ``last_out``: our latest email to that
    customer (see the module's docstring), None when we never wrote.
    """

    id: int
    customer_key: str
    at: datetime
    subject: str | None
    message_id: str | None
    named_by_reply: bool
    last_out: datetime | None


def _t(text: str | None) -> datetime | None:
    return parse_iso(text)


class ContactLog(Connection):
    """The store's part that reads contact times (the rules are :mod:`crm_automation.contact`'s)."""

    def contact_times(self, stage_field: str | None) -> dict[str, ContactTimes]:
        """Per customer with any of them: latest ``email_in``, our latest email, latest change of ``stage_field``.

        Three grouped reads, each over a partial index; customers with none of
        the three are absent (their ``first_seen`` is all there is).
        """
        last_in: dict[str, str] = dict(self.conn.execute(
            "SELECT customer_key, MAX(occurred_at) FROM activities WHERE kind = 'email_in' "
            "AND customer_key IS NOT NULL GROUP BY customer_key").fetchall())
        last_out: dict[str, str] = dict(self.conn.execute(_last_out_sql(self.dialect)).fetchall())
        staged: dict[str, str] = {}
        if stage_field is not None:
            staged = dict(self.conn.execute(
                "SELECT customer_key, MAX(occurred_at) FROM activities WHERE kind = 'field_changed' "
                f"AND {self.dialect.json_text('details', 'field')} = ? AND customer_key IS NOT NULL "
                "GROUP BY customer_key", (stage_field,)).fetchall())
        return {k: ContactTimes(_t(last_in.get(k)), _t(last_out.get(k)), _t(staged.get(k)))
                for k in last_in.keys() | last_out.keys() | staged.keys()}

    def inbound_after_outbound(self, since: datetime) -> list[InboundMail]:
        """Customer mail received since ``since`` and after our latest email to that customer, oldest first.

        The cheap half of the "answered" rule done in SQL so that only the
        few candidates leave the log: mail followed by a later email of ours
        is left out here; whether a reply names a candidate is read for each
        (``named_by_reply``), and :func:`crm_automation.contact.answered`
        decides.
        """
        rows = self.conn.execute(
            f"WITH last_out AS ({_last_out_sql(self.dialect)}), "
            "named AS (SELECT DISTINCT j.value AS mid FROM activities r, "
            f"{self.dialect.json_array('r.details', 'j', 'answers')} WHERE r.kind = 'reply_out') "
            "SELECT a.id, a.customer_key, a.occurred_at, a.subject, a.message_id, "
            "a.message_id IN (SELECT mid FROM named), o.t FROM activities a "
            "LEFT JOIN last_out o ON o.customer_key = a.customer_key "
            "WHERE a.kind = 'email_in' AND a.customer_key IS NOT NULL AND a.occurred_at >= ? "
            "AND (o.t IS NULL OR a.occurred_at >= o.t) ORDER BY a.occurred_at, a.id", (iso(since),))
        return [InboundMail(i, k, parse_iso(at) or since, subject, mid, bool(named), _t(out))
                for i, k, at, subject, mid, named, out in rows]

    def inbound_customers(self, message_ids: list[str]) -> dict[str, str | None]:
        """Message-ID -> the customer (None: an unknown sender) of the customer mail logged under it.

        Customer mail is ``email_in`` (a reply or an enquiry); read by the
        inbound Message-ID index (literal kinds, so SQLite uses it), 500 ids
        a query. The Sent folder's reading asks which mail a reply answers.
        """
        out: dict[str, str | None] = {}
        ids = sorted(set(message_ids))
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            for mid, key in self.conn.execute(
                    f"SELECT message_id, customer_key FROM activities WHERE message_id IN "
                    f"({','.join('?' * len(part))}) AND kind IN {INBOUND_KINDS_SQL} AND kind = 'email_in' "
                    "ORDER BY id", part):
                if out.get(mid) is None:
                    out[mid] = key
        return out
