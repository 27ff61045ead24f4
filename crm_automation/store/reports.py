"""Reports over the log: the campaign funnel, last contact times for write-back, row counts, and stage runs."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crm_automation.models import SendStatus
from crm_automation.store.activities import PERMANENCE_SQL
from crm_automation.store.connection import Connection, iso, parse_iso


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

    def to_dict(self) -> dict[str, Any]:
        """``report --json``/``--csv``: the fields in this order, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


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

    def finish_run(self, run_id: int, now: datetime, *, ok: bool, stats: dict[str, Any], error: str | None) -> None:
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
