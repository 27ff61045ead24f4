"""The rows ``report pipeline`` reads (issue #21): plain tuples, every customer at once, grouped by the caller.

The use case (:mod:`crm_automation.app.pipeline`) puts these rows in pandas
DataFrames and does the grouping and the medians; the rules (stale, what
counts as our email, answered) are :mod:`crm_automation.contact`'s. This
part only reads, each method one set-based query over the log's indexes,
never a query per customer from Python. The customers and their contact
times come from :meth:`crm_automation.store.contact.ContactLog.sales_rows`
(one query, the digests' too); here: the month's customer mail, each with
our first email after it, the replies naming it, and the stage moves. Times
are the log's ISO 8601 UTC text; the caller parses them in bulk.
"""

from __future__ import annotations

from datetime import datetime

from crm_automation.store.connection import Connection, iso

# Our first email to that customer after the mail and up to the report's end: a campaign step sent, or a reply of
# the team's (``contact.answered``'s "a later email of ours"). One seek each in ``idx_sends_sent_customer`` and the
# ``reply_out`` partial index: 0.1 s for a month of mail, against reading all our emails (0.3 s) to pair them.
_FIRST_SENT_AFTER = (
    "(SELECT s.sent_at FROM sends s WHERE s.status = 'sent' AND s.customer_key = m.customer_key "
    "AND s.kind = 'campaign_step' AND s.sent_at > m.occurred_at AND s.sent_at <= ? ORDER BY s.sent_at LIMIT 1)")
_FIRST_REPLY_AFTER = (
    "(SELECT MIN(r.occurred_at) FROM activities r WHERE r.kind = 'reply_out' AND r.customer_key = m.customer_key "
    "AND r.occurred_at > m.occurred_at AND r.occurred_at <= ?)")

MailRow = tuple[int, str, str, str | None, str | None, str | None]
"""(activity id, customer key, received at, Message-ID, our first campaign step sent after it, our first
``reply_out`` after it) of a customer's reply or enquiry; the two answers up to the window's end, None: none."""
NamedRow = tuple[str, str]
"""(Message-ID answered, ISO time of our reply naming it)."""
MoveRow = tuple[str, str, object, object]
"""(customer key, ISO time, old value, new value) of a change of the stage field."""


class PipelineLog(Connection):
    """The store's part that reads the pipeline's rows (the use case groups them)."""

    def customer_mail_between(self, start: datetime, end: datetime) -> list[MailRow]:
        """Each reply or enquiry of a customer received in [start, end], with our first email after it (to ``end``).

        ``email_in`` with a customer (never auto-replies, bounces or
        unsubscribes); the use case counts them and pairs each with its answer.
        """
        e = iso(end)
        return self.conn.execute(
            f"SELECT m.id, m.customer_key, m.occurred_at, m.message_id, {_FIRST_SENT_AFTER}, {_FIRST_REPLY_AFTER} "
            "FROM activities m WHERE m.kind = 'email_in' AND m.customer_key IS NOT NULL "
            "AND m.occurred_at >= ? AND m.occurred_at <= ?", (e, e, iso(start), e)).fetchall()

    def named_replies_between(self, start: datetime, end: datetime) -> list[NamedRow]:
        """(Message-ID, time) for each message a ``reply_out`` of [start, end] names in In-Reply-To/References."""
        return self.conn.execute(
            f"SELECT j.value, r.occurred_at FROM activities r, {self.dialect.json_array('r.details', 'j', 'answers')} "
            "WHERE r.kind = 'reply_out' AND r.occurred_at >= ? AND r.occurred_at <= ?",
            (iso(start), iso(end))).fetchall()

    def stage_moves_between(self, stage_field: str, start: datetime, end: datetime) -> list[MoveRow]:
        """Each change of ``stage_field`` logged in [start, end]: customer, time, old and new value."""
        d = self.dialect
        return self.conn.execute(
            f"SELECT customer_key, occurred_at, {d.json_value('details', 'old')}, {d.json_value('details', 'new')} "
            f"FROM activities WHERE kind = 'field_changed' AND {d.json_text('details', 'field')} = ? "
            "AND customer_key IS NOT NULL AND occurred_at >= ? AND occurred_at <= ?",
            (stage_field, iso(start), iso(end))).fetchall()
