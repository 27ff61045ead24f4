"""What a send pass asks the log to plan by question, not by scan (issue #23); records, decides nothing.

The plan part (``send/plan.py``) asks: what happened since the last plan
(customers added or changed by a sync, emails sent), which follow-ups have
come due (``plan_due``, indexed by time), which campaigns changed since they
were last planned (``campaigns.planned_as``), and then the history of those
candidates only, one query per kind. Keys travel as one JSON array
(``json_each``), so each read is one statement on a read-only log too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from crm_automation.models import EmailStatus, Kind, Permanence
from crm_automation.store.activities import InboundEvent, QuarantinedContact
from crm_automation.store.connection import Connection, iso, parse_iso
from crm_automation.store.customers import StoredCustomer
from crm_automation.store.dialect import Dialect
from crm_automation.store.schema import INBOUND_KINDS_SQL, permanence_sql
from crm_automation.store.sends import _SEND_COLS, SendRow, _send


def _keys_in(d: Dialect) -> str:
    """The keys bound as one JSON array parameter, as a subquery (one statement whatever their number)."""
    return f"(SELECT j.value FROM {d.json_array('?', 'j')})"


EARLIEST = "0000"  # a due time before any other: look again at the next pass


@dataclass(frozen=True, slots=True)
class PlanMark:
    """Where the last recorded plan stopped: the last activity it saw, and the mapping's key field then."""

    activity_id: int
    key_field: str | None


@dataclass(frozen=True, slots=True)
class Events:
    """What happened since the last plan: customers added or changed, and (campaign, customer) sent an email."""

    touched: frozenset[str]
    sent: frozenset[tuple[str, str]]


def _keys(keys: Iterable[str]) -> str:
    return json.dumps(sorted(keys), ensure_ascii=False)


class PlanLog(Connection):
    """The store's part the planner asks (table ``plan_due``, ``campaigns.planned_as``, the plan mark)."""

    # ------------------------------------------------------------ what is new
    def plan_mark(self) -> PlanMark | None:
        """Where the last recorded plan stopped, or None before the first (every campaign is planned then)."""
        seen = self.meta("plan_activity_id")
        return PlanMark(int(seen), self.meta("plan_key_field") or None) if seen is not None else None

    def last_activity_id(self) -> int:
        """The newest activity's id (0 for an empty log)."""
        return int(self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM activities").fetchone()[0])

    def events_between(self, after: int, upto: int) -> Events:
        """Customers added or changed, and emails sent, logged after activity ``after`` up to ``upto``."""
        touched, sent = set(), set()
        for key, kind, campaign in self.conn.execute(
                "SELECT customer_key, kind, campaign FROM activities WHERE id > ? AND id <= ? AND customer_key "
                "IS NOT NULL AND kind IN ('customer_added', 'field_changed', 'email_out')", (after, upto)):
            if kind == Kind.EMAIL_OUT.value:
                if campaign is not None:
                    sent.add((campaign, key))
            else:
                touched.add(key)
        return Events(frozenset(touched), frozenset(sent))

    def due_by(self, now: datetime, campaigns: Iterable[str]) -> list[tuple[str, str]]:
        """(campaign, customer) of these campaigns whose next look has come (``plan_due``, by its index)."""
        return list(self.conn.execute(f"SELECT campaign, customer_key FROM plan_due WHERE due_at <= ? AND campaign "
                                      f"IN {_keys_in(self.dialect)}", (iso(now), _keys(campaigns))))

    def queued_customers(self) -> set[str]:
        """Customers with a queued send (the dispatch checks them with their history)."""
        return {k for (k,) in self.conn.execute("SELECT customer_key FROM sends WHERE status = 'queued' ORDER BY id")}

    def planned_as(self) -> dict[str, str | None]:
        """Campaign -> its definition as last planned (None: never, or held then)."""
        return dict(self.conn.execute("SELECT id, planned_as FROM campaigns"))

    def campaign_customers(self, campaign: str) -> set[str]:
        """Customers with any send of one campaign (a re-planned campaign's follow-ups)."""
        return {k for (k,) in self.conn.execute("SELECT DISTINCT customer_key FROM sends WHERE campaign = ?",
                                                (campaign,))}

    def present_customers(self, *, seen_after: datetime | None = None) -> set[str]:
        """Customers in the sheet (first seen after ``seen_after`` when given)."""
        if seen_after is None:
            return {k for (k,) in self.conn.execute("SELECT key FROM customers WHERE present = 1")}
        return {k for (k,) in self.conn.execute("SELECT key FROM customers WHERE present = 1 AND first_seen > ?",
                                                (iso(seen_after),))}

    def every_customer(self) -> set[str]:
        """Every customer the log knows, in the sheet or not, with or without sends (``check --plan``'s outlook)."""
        return {k for (k,) in self.conn.execute("SELECT key FROM customers UNION SELECT customer_key FROM sends")}

    def changed_to(self, field_name: str) -> set[str]:
        """Customers a sync logged a change of ``field_name`` for (a ``change`` campaign re-planned)."""
        return {k for (k,) in self.conn.execute(
            "SELECT DISTINCT customer_key FROM activities WHERE kind = 'field_changed' AND "
            f"{self.dialect.json_text('details', 'field')} = ?", (field_name,))}

    # ------------------------------------------------------------ candidates' history, one query per kind
    def customers_among(self, keys: Iterable[str]) -> Iterator[StoredCustomer]:
        """The present customers among ``keys``, in the sheet's order of arrival (the full scan's order)."""
        for k, r, d, fs, es, p in self.conn.execute(
                f"SELECT key, row, data, first_seen, email_status, present FROM customers WHERE present = 1 "
                f"AND key IN {_keys_in(self.dialect)} ORDER BY {self.dialect.rowid}", (_keys(keys),)):
            yield StoredCustomer(k, r, json.loads(d), parse_iso(fs) or datetime.now(UTC), EmailStatus(es or "ok"),
                                 bool(p))

    def present_keys_among(self, keys: Iterable[str]) -> Iterator[str]:
        """The present customers' keys among ``keys``, in the order :meth:`customers_among` gives them, streamed."""
        for (k,) in self.conn.execute(
                f"SELECT key FROM customers WHERE present = 1 AND key IN {_keys_in(self.dialect)} "
                f"ORDER BY {self.dialect.rowid}", (_keys(keys),)):
            yield k

    def absent_among(self, keys: Iterable[str]) -> list[str]:
        """The keys among ``keys`` of no present customer (left the sheet, or never in it), sorted."""
        return sorted(k for (k,) in self.conn.execute(
            f"SELECT j.value FROM {self.dialect.json_array('?', 'j')} WHERE NOT EXISTS "
            "(SELECT 1 FROM customers WHERE key = j.value AND present = 1)", (_keys(keys),)))

    def sends_among(self, keys: Iterable[str]) -> list[SendRow]:
        """Every send to these customers, oldest first."""
        return [_send(*r) for r in self.conn.execute(
            f"SELECT {_SEND_COLS} FROM sends WHERE customer_key IN {_keys_in(self.dialect)} ORDER BY id",
            (_keys(keys),))]

    def inbound_among(self, keys: Iterable[str]) -> list[InboundEvent]:
        """These customers' inbound activities, each bounce's permanence decoded.

        Each customer's in the order the full read gave them (its index: by
        ``occurred_at``, then as logged), so a stop's reason names the same message.
        """
        return [InboundEvent(k, Kind(kind), parse_iso(t) or datetime.now(UTC), c, Permanence(p) if p else None)
                for k, kind, t, c, p in self.conn.execute(
                    f"SELECT a.customer_key, a.kind, COALESCE(a.logged_at, a.occurred_at), a.campaign, "
                    f"CASE WHEN a.kind = 'bounce' THEN {permanence_sql(self.dialect)} END FROM activities a "
                    f"WHERE a.customer_key IN {_keys_in(self.dialect)} AND a.kind IN {INBOUND_KINDS_SQL} "
                    "ORDER BY a.occurred_at, a.id",
                    (_keys(keys),))]

    def field_changes_among(self, fields: Iterable[str], keys: Iterable[str]) -> dict[str, list[tuple[str, object,
                                                                                                      datetime]]]:
        """Field -> (customer, new value, when) of these customers' changes of ``fields``, oldest first."""
        out: dict[str, list[tuple[str, object, datetime]]] = {f: [] for f in fields}
        if not out:
            return out
        for k, d, t in self.conn.execute(
                "SELECT customer_key, details, occurred_at FROM activities WHERE customer_key IN "
                f"{_keys_in(self.dialect)} AND kind = 'field_changed' ORDER BY id", (_keys(keys),)):
            details = json.loads(d)
            f = details.get("field")
            if f in out:
                out[f].append((k, details.get("new"), parse_iso(t) or datetime.now(UTC)))
        return out

    def quarantined_among(self, keys: Iterable[str]) -> list[QuarantinedContact]:
        """These customers' quarantined messages, oldest first."""
        return [QuarantinedContact(k, parse_iso(t) or datetime.now(UTC), e) for k, t, e in self.conn.execute(
            "SELECT customer_key, received_at, error FROM quarantine WHERE customer_key IN "
            f"{_keys_in(self.dialect)} ORDER BY id",
            (_keys(keys),))]

    def suppressed_among(self, emails: Iterable[str]) -> frozenset[str]:
        """Which of these addresses (lower case) are suppressed."""
        return frozenset(e for (e,) in self.conn.execute(
            f"SELECT email FROM suppressions WHERE email IN {_keys_in(self.dialect)}", (_keys(emails),)))

    # ------------------------------------------------------------ recording a plan
    def record_plan(self, mark: PlanMark, planned_as: dict[str, str | None], due: dict[tuple[str, str], str | None],
                    *, replanned: Iterable[str] = ()) -> None:
        """After a plan was queued: the mark, each campaign's definition, and the next looks, in one transaction.

        ``due``: (campaign, customer) -> when to look again (:data:`EARLIEST`:
        at the next pass), None to forget; ``replanned`` campaigns forget every
        earlier look first (their plan covered all their customers).
        """
        with self.transaction():
            for c in replanned:
                self.conn.execute("DELETE FROM plan_due WHERE campaign = ?", (c,))
            self.conn.executemany("DELETE FROM plan_due WHERE campaign = ? AND customer_key = ?",
                                  [k for k, v in due.items() if v is None])
            self.conn.executemany(
                "INSERT INTO plan_due (campaign, customer_key, due_at) VALUES (?, ?, ?) ON CONFLICT "
                "(campaign, customer_key) DO UPDATE SET due_at = excluded.due_at",
                [(c, k, v) for (c, k), v in due.items() if v is not None])
            for c, digest in planned_as.items():
                self.conn.execute("UPDATE campaigns SET planned_as = ? WHERE id = ?", (digest, c))
            self.conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                                  "value = excluded.value",
                                  [("plan_activity_id", str(mark.activity_id)),
                                   ("plan_key_field", mark.key_field or "")])
