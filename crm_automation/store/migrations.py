"""Named, transactional schema migrations, recorded in ``_migrations``.

The sqlite-utils habit: each migration is a function applied once, in
order, inside a transaction, so a crash mid-migration leaves the old schema.
``SCHEMA_VERSION`` is the number of migrations; later issues append to
``MIGRATIONS`` and never edit an applied one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlite_utils

from crm_automation.errors import ConfigError
from crm_automation.store.schema import create_v1

MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("0001_initial", create_v1),
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply pending migrations; return the names applied."""
    conn = db.conn
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {r[0] for r in conn.execute("SELECT name FROM _migrations")}
    known = {name for name, _ in MIGRATIONS}
    unknown = done - known
    if unknown:
        raise ConfigError(
            f"{db.conn.execute('PRAGMA database_list').fetchone()[2]}: the log was written by a newer "
            f"crm-automation (migrations {', '.join(sorted(unknown))}); upgrade before using it"
        )
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
