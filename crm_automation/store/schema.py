"""The SQLite log's tables (SPEC §8), created through sqlite-utils.

Columns beyond the SPEC's are marked "extra" and exist for exactly-once
bookkeeping: ``customers.row_hash`` (skip unchanged rows), ``activities.logged_at``,
``sends.email``/``attempts``/``next_attempt_at``, ``quarantine.digest`` and the
``campaigns`` table (when each campaign was first seen, so adding one never
mails existing customers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils

INBOUND_KINDS = ("email_in", "auto_reply", "bounce", "unsubscribe")


def create_v1(db: sqlite_utils.Database) -> None:
    """Schema version 1: every table of SPEC §8."""
    db["customers"].create(
        {"key": str, "row": int, "data": str, "first_seen": str, "last_changed": str, "email_status": str,
         "row_hash": str, "present": int, "removed_at": str},
        pk="key", defaults={"email_status": "ok", "present": 1}, not_null={"data", "first_seen"},
    )
    db["activities"].create(
        {"id": int, "customer_key": str, "kind": str, "occurred_at": str, "subject": str, "body": str,
         "message_id": str, "in_reply_to": str, "campaign": str, "step": int, "source": str, "details": str,
         "logged_at": str},
        pk="id", not_null={"kind", "occurred_at"},
    )
    db["activities"].create_index(["customer_key", "occurred_at"])
    kinds = ", ".join(f"'{k}'" for k in INBOUND_KINDS)
    db.execute(
        f"CREATE UNIQUE INDEX idx_activities_inbound_message_id ON activities(message_id) "
        f"WHERE kind IN ({kinds})"
    )
    db["sends"].create(
        {"id": int, "campaign": str, "step": int, "customer_key": str, "status": str, "message_id": str,
         "queued_at": str, "sent_at": str, "error": str, "email": str, "attempts": int, "next_attempt_at": str},
        pk="id", not_null={"campaign", "step", "customer_key", "status"}, defaults={"attempts": 0},
    )
    db["sends"].create_index(["campaign", "step", "customer_key"], unique=True)
    db["sends"].create_index(["message_id"])
    db["suppressions"].create({"email": str, "reason": str, "at": str, "source": str}, pk="email")
    db["quarantine"].create(
        {"id": int, "source": str, "received_at": str, "error": str, "raw": bytes, "digest": str}, pk="id"
    )
    db["quarantine"].create_index(["digest"], unique=True)
    db["mailbox_state"].create(
        {"folder": str, "uidvalidity": int, "last_uid": int, "updated_at": str}, pk="folder"
    )
    db["runs"].create(
        {"id": int, "job": str, "started_at": str, "finished_at": str, "ok": int, "stats": str, "error": str},
        pk="id",
    )
    db["campaigns"].create({"id": str, "first_seen": str}, pk="id")


def create_v2(db: sqlite_utils.Database) -> None:
    """Schema version 2: ``sheet_state`` remembers the sheet's content digest at the last complete sync.

    A re-sync of an unchanged file then costs one hash of its bytes instead
    of a read, a validation and a diff (issue #3's 1.2x target).
    """
    db["sheet_state"].create({"source": str, "fingerprint": str, "synced_at": str, "rows": int, "problems": str},
                             pk="source")
