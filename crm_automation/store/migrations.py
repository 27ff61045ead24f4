"""Named, transactional schema migrations, recorded in ``_migrations``.

The sqlite-utils habit: each migration is a function applied once, in
order, inside a transaction, so a crash mid-migration leaves the old schema.
``SCHEMA_VERSION`` is the number of migrations; later issues append to
``MIGRATIONS`` and never edit an applied one.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from crm_automation.errors import ConfigError
from crm_automation.store.schema import (
    create_v1,
    create_v2,
    create_v3,
    create_v4,
    create_v5,
    create_v6,
    create_v7,
    create_v8,
    create_v9,
    create_v10,
    create_v11,
    create_v12,
    create_v13,
)

if TYPE_CHECKING:
    import sqlite_utils

MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("0001_initial", create_v1),
    ("0002_sheet_state", create_v2),
    ("0003_hardening", create_v3),
    ("0004_step_identity", create_v4),
    ("0005_message_kinds", create_v5),
    ("0006_plan_by_question", create_v6),
    ("0007_send_tracking", create_v7),
    ("0008_dashboard_reads", create_v8),
    ("0009_contact_times", create_v9),
    ("0010_send_follow_ups", create_v10),
    ("0011_stage_moves_by_time", create_v11),
    ("0012_workers", create_v12),
    ("0013_claims", create_v13),
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply pending migrations; return the names applied.

    sqlite-utils is loaded only when a migration is pending, so a routine
    run starts fast.
    """
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return []
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {r[0] for r in conn.execute("SELECT name FROM _migrations")}
    known = {name for name, _ in MIGRATIONS}
    unknown = done - known
    if unknown:
        raise ConfigError(
            f"{conn.execute('PRAGMA database_list').fetchone()[2]}: the log was written by a newer "
            f"crm-automation (migrations {', '.join(sorted(unknown))}); upgrade before using it"
        )
    db = _database(conn)
    applied = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        with db.atomic():
            fn(db)
            conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, datetime.now(UTC).isoformat()))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        applied.append(name)
    return applied


def _database(conn: sqlite3.Connection) -> sqlite_utils.Database:
    """``conn`` as a sqlite-utils ``Database``, importing sqlite-utils without the pandas and numpy it attempts.

    sqlite-utils imports them, when installed, only to accept their values
    in inserts, which we never pass; that took ~0.5 s of a first sync
    (issue #3). A ``None`` entry in ``sys.modules`` makes those imports fail
    fast, as if the packages were absent; a module already loaded is left
    alone.
    """
    blocked = [m for m in ("pandas", "numpy") if m not in sys.modules]
    for m in blocked:
        # typeshed types sys.modules as dict[str, ModuleType]; None is the documented way to block an import.
        sys.modules[m] = None  # type: ignore[assignment]
    try:
        import sqlite_utils
    finally:
        for m in blocked:
            del sys.modules[m]
    return sqlite_utils.Database(conn)
