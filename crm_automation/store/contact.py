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


# One customer's latest times, each one index seek (a correlated MAX over the partial indexes of schema 9 and
# ``idx_sends_sent_customer``): for 100,000 customers about 0.45 s in all, against about 1.1 s for the grouped
# reads of :meth:`ContactLog.contact_times` plus joining them by key in Python.
_LAST_IN = "(SELECT MAX(i.occurred_at) FROM activities i WHERE i.kind = 'email_in' AND i.customer_key = {who})"
_LAST_SENT = ("(SELECT s.sent_at FROM sends s WHERE s.status = 'sent' AND s.customer_key = {who} "
              "AND s.kind = 'campaign_step' ORDER BY s.sent_at DESC LIMIT 1)")  # stops at the first step met
_LAST_REPLY_OUT = "(SELECT MAX(r.occurred_at) FROM activities r WHERE r.kind = 'reply_out' AND r.customer_key = {who})"
# ``{field}``: ``Dialect.json_text("f.details", "field")``, on SQLite ``json_extract(f.details, '$.field')`` to the
# letter, so the seek uses schema 9's expression index (PostgreSQL: schema_pg's index on the same expression).
_STAGE_CHANGED = ("(SELECT MAX(f.occurred_at) FROM activities f WHERE f.kind = 'field_changed' "
                  "AND {field} = ? AND f.customer_key = {who})")

SalesRow = tuple[str, object, object, object, str, str | None, str | None, str | None, str | None]
"""One customer present in the sheet, as :meth:`ContactLog.sales_rows` reads them.

(key, name, stage and owner values as the mapping made them (None: no such
field), first seen, latest ``email_in``, latest campaign step sent, latest
``reply_out``, latest change of the stage field): times are the log's ISO
8601 UTC text (``iso``), None for none, or when the row's times were not asked.
"""


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

    def sales_rows(self, name_field: str | None, stage_field: str | None, owner_field: str | None, *,
                   timed: bool = True) -> list[SalesRow]:
        """Every customer present in the sheet: name, stage, owner, first seen, and (``timed``) their contact times.

        One query, in the sheet's order of arrival; each customer's times cost
        four index seeks. (Asking the times of the stages with a limit only,
        by a condition on the stage, measured slower: the condition is
        evaluated once per time.)
        """
        d = self.dialect

        def value(name: str | None) -> tuple[str, list[object]]:
            return (d.json_value_at("c.data"), [name]) if name else ("NULL", [])

        staged = _STAGE_CHANGED.format(field=d.json_text("f.details", "field"), who="c.key")
        times: list[tuple[str, list[object]]] = [
            (_LAST_IN.format(who="c.key"), []), (_LAST_SENT.format(who="c.key"), []),
            (_LAST_REPLY_OUT.format(who="c.key"), []), (staged, [stage_field]) if stage_field else ("NULL", [])]
        if not timed:
            times = [("NULL", [])] * 4
        parts = [("c.key", []), value(name_field), value(stage_field), value(owner_field), ("c.first_seen", []),
                 *times]
        # The order of arrival said, not left to the scan (PostgreSQL's heap order moves with updates); on SQLite
        # ``ORDER BY c.rowid`` is the scan's own order, no sort.
        sql = f"SELECT {', '.join(p for p, _ in parts)} FROM customers c WHERE c.present = 1 ORDER BY c.{d.rowid}"
        return self.conn.execute(sql, [a for _, args in parts for a in args]).fetchall()

    def inbound_after_outbound(self, since: datetime) -> list[InboundMail]:
        """Customer mail received since ``since`` and after our latest email to that customer, oldest first.

        The cheap half of the "answered" rule done in SQL so that only the
        few candidates leave the log: mail followed by a later email of ours
        is left out here; whether a reply names a candidate is read for each
        (``named_by_reply``), and :func:`crm_automation.contact.answered`
        decides.
        """
        # Our latest email to that customer, each a correlated MAX by index (0.05 s for a month of mail at
        # 100,000 customers), not the grouped read of every customer's (1 s): only the month's senders are asked.
        # The messages our replies name are read apart (0.06 s, a scan of the reply_out index): inside the same
        # statement SQLite chose to index the whole activities table for them first (0.25 s).
        named = {mid for (mid,) in self.conn.execute(
            f"SELECT j.value FROM activities r, {self.dialect.json_array('r.details', 'j', 'answers')} "
            "WHERE r.kind = 'reply_out'")}
        rows = self.conn.execute(
            "SELECT c.id, c.customer_key, c.occurred_at, c.subject, c.message_id, "
            f"{_LAST_SENT.format(who='c.customer_key')}, {_LAST_REPLY_OUT.format(who='c.customer_key')} "
            "FROM activities c WHERE c.kind = 'email_in' AND c.customer_key IS NOT NULL AND c.occurred_at >= ? "
            "ORDER BY c.occurred_at, c.id", (iso(since),)).fetchall()
        out = []
        for i, k, at, subject, mid, sent, replied in rows:
            last = max(sent, replied) if sent is not None and replied is not None else sent or replied
            if last is None or at >= last:
                out.append(InboundMail(i, k, parse_iso(at) or since, subject, mid, mid in named, _t(last)))
        return out

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
