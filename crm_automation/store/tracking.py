"""Tracked links and opens (issue #19): what each send's rewritten links led to, and the first click or open.

The composer rewrites a tracked campaign's links to
``{public_url}/c/{token}/{n}`` and hands the original URLs to the send
pass, which records them here in the transaction that marks the send
``sending`` (:func:`insert_links`, from ``SendLog.mark_sent_and_sending``):
a click that arrives a moment after the hand-over finds them, and a crash
never leaves a delivered message whose links lead nowhere. ``serve``
redirects only to a URL stored here (no open redirect).

Once per link per send, once per send for opens: a conditional ``UPDATE``
(``clicked_at IS NULL``) and an ``INSERT ... ON CONFLICT DO NOTHING`` on a primary key,
each one statement, so two requests at the same instant record one
activity, with no read-then-write race. The caller (``app/tracking.py``)
adds the activity in the same transaction only when the statement says
this was the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from crm_automation.store.connection import Connection, Driver, iso


@dataclass(frozen=True, slots=True)
class TokenSend:
    """The campaign send a token names: its row, customer, campaign and step."""

    send_id: int
    customer_key: str
    campaign: str
    step: int


def insert_links(conn: Driver, send_id: int, links: Sequence[str]) -> None:
    """Record a send's tracked links, numbered from 0 (the caller's transaction).

    A message built again for the same send (a 4xx retry renders it anew,
    templates may have changed) replaces the earlier links.
    """
    conn.execute("DELETE FROM send_links WHERE send_id = ?", (send_id,))
    conn.executemany("INSERT INTO send_links (send_id, n, url) VALUES (?, ?, ?)",
                     [(send_id, n, url) for n, url in enumerate(links)])


class TrackingLog(Connection):
    """The store's part that keeps tracked links, clicks and opens (tables ``send_links``, ``send_opens``)."""

    def send_by_token(self, token: str) -> TokenSend | None:
        """The campaign send whose ``Message-ID`` has ``token`` as its local part, or None.

        By a range of the ``sends.message_id`` index (as ``send_for_token``):
        one indexed step, whatever the size of the log.
        """
        rows = self.conn.execute(
            "SELECT id, customer_key, campaign, step FROM sends WHERE message_id >= ? AND message_id < ? "
            "AND kind = 'campaign_step' LIMIT 2", (f"<{token}@", f"<{token}A")).fetchall()
        if len(rows) != 1:
            return None
        sid, key, campaign, step = rows[0]
        return TokenSend(sid, key, campaign, step)

    def tracked_link(self, send_id: int, n: int) -> str | None:
        """The original URL of link ``n`` of a send, or None when the send has no such link."""
        row = self.conn.execute("SELECT url FROM send_links WHERE send_id = ? AND n = ?", (send_id, n)).fetchone()
        return None if row is None else str(row[0])

    def tracked_links(self, send_id: int) -> list[str]:
        """A send's tracked links, by number."""
        return [u for (u,) in self.conn.execute("SELECT url FROM send_links WHERE send_id = ? ORDER BY n",
                                                (send_id,))]

    def mark_clicked(self, send_id: int, n: int, now: datetime) -> bool:
        """Note the first click on link ``n`` of a send; False when it was clicked before (or has no such link)."""
        with self.transaction():
            cur = self.conn.execute("UPDATE send_links SET clicked_at = ? WHERE send_id = ? AND n = ? AND "
                                    "clicked_at IS NULL", (iso(now), send_id, n))
        return cur.rowcount == 1

    def mark_opened(self, send_id: int, now: datetime) -> bool:
        """Note a send's first open; False when it was opened before."""
        with self.transaction():
            cur = self.conn.execute("INSERT INTO send_opens (send_id, opened_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                                    (send_id, iso(now)))
        return cur.rowcount == 1
