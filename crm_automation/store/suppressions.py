"""The suppression list: addresses never mailed, with why, when and who said so (SPEC §8 ``suppressions``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from crm_automation.models import SuppressionReason
from crm_automation.store.connection import Connection, Driver, iso, parse_iso


def _reason(text: str) -> SuppressionReason | str:
    """The reason as its enum; a reason written into the table by hand is kept as its text."""
    return SuppressionReason(text) if text in _REASONS else text


_REASONS = frozenset(r.value for r in SuppressionReason)


@dataclass(frozen=True, slots=True)
class Suppression:
    """One suppressed address's entry: why, since when, and who said so.

    ``reason``: manual, unsubscribed, bounced or soft_bounces; ``source``:
    ``cli`` or what caused it (the activity, the soft-bounce score). ``at``
    is None only for a row written by hand without a time.
    """

    reason: SuppressionReason | str
    at: datetime | None
    source: str

    def to_dict(self) -> dict[str, str | None]:
        """``suppress list --json``: the fields by name, ``at`` in the log's time format."""
        return {"reason": self.reason, "at": iso(self.at) if self.at is not None else None, "source": self.source}


def insert_suppression(conn: Driver, email: str, reason: SuppressionReason, source: str, now: datetime) -> bool:
    """Add an address unless it is there already (no transaction: the caller's unit owns it)."""
    cur = conn.execute("INSERT INTO suppressions (email, reason, at, source) VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                       (email.strip().lower(), reason, iso(now), source))
    return cur.rowcount > 0


def read_suppressions(conn: Driver) -> dict[str, Suppression]:
    """Email -> its entry, oldest first."""
    return {e: Suppression(_reason(r), parse_iso(a), s) for e, r, a, s in conn.execute(
        "SELECT email, reason, at, source FROM suppressions ORDER BY at, email")}


def read_suppression_page(conn: Driver, limit: int, offset: int) -> list[tuple[str, Suppression]]:
    """``limit`` entries from ``offset``, in :func:`read_suppressions`' order (ties by address, so pages are stable)."""
    return [(e, Suppression(_reason(r), parse_iso(a), s)) for e, r, a, s in conn.execute(
        "SELECT email, reason, at, source FROM suppressions ORDER BY at, email LIMIT ? OFFSET ?", (limit, offset))]


class SuppressionList(Connection):
    """The store's part that keeps the suppression list."""

    def suppress(self, email: str, reason: SuppressionReason, source: str, now: datetime) -> bool:
        """Add an address to the suppression list; False when it was already there."""
        with self.transaction():
            return insert_suppression(self.conn, email, reason, source, now)

    def unsuppress(self, email: str) -> bool:
        """Remove an address from the suppression list."""
        with self.transaction():
            cur = self.conn.execute("DELETE FROM suppressions WHERE email = ?", (email.strip().lower(),))
        return cur.rowcount > 0

    def suppression(self, email: str) -> Suppression | None:
        """One address's entry, or None when it is not on the list."""
        row = self.conn.execute("SELECT reason, at, source FROM suppressions WHERE email = ?",
                                (email.strip().lower(),)).fetchone()
        return None if row is None else Suppression(_reason(row[0]), parse_iso(row[1]), row[2])

    def unsuppress_if(self, email: str, reason: SuppressionReason, source: str) -> bool:
        """Remove an address only while its entry is still the one ``reason`` and ``source`` made (issue #19).

        One statement, so an entry replaced meanwhile (a bounce, the admin's
        own ``suppress add``) is never removed by an undo meant for another.
        """
        with self.transaction():
            cur = self.conn.execute("DELETE FROM suppressions WHERE email = ? AND reason = ? AND source = ?",
                                    (email.strip().lower(), reason, source))
        return cur.rowcount > 0

    def suppressions(self) -> dict[str, Suppression]:
        """Email -> its :class:`Suppression`, oldest first."""
        return read_suppressions(self.conn)

    def suppressions_page(self, limit: int, offset: int = 0) -> list[tuple[str, Suppression]]:
        """One page of the list, oldest first (the web page's; issue #19)."""
        return read_suppression_page(self.conn, limit, offset)

    def suppression_count(self) -> int:
        """How many addresses are on the list."""
        return int(self.conn.execute("SELECT COUNT(*) FROM suppressions").fetchone()[0])
