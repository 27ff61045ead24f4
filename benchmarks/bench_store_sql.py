"""The send loop's statements through each candidate SQL mechanism (issue #20: "measure before you choose").

One message of the send pass costs the store one commit of four statements
(``SendLog.mark_sent_and_sending``): the last message's ``sent`` mark, its
``email_out`` activity, the gate's read (suppressed? email status?) and the
next message's ``sending`` mark. Timed in this process's CPU time (the machine is shared: wall time there
measures the neighbours), per message, each variant on its own
copy of one log of N queued sends, rounds interleaved:

  store        today's code: Store.mark_sent_and_sending (Guarded, transaction())
  sqlite3      the same statements on a bare sqlite3 connection (the floor)
  dialect      sqlite3, each text passed through Dialect.sql (SQLite's identity)
  pyformat     sqlite3, each text also looked up in the PostgreSQL translation's cache
  returning    sqlite3, the activity inserted with RETURNING id instead of lastrowid
  sqlalchemy   the same texts as SQLAlchemy Core ``text()`` on a SQLite engine (pip install sqlalchemy)
  postgresql   psycopg on a throwaway loopback cluster, translated texts (informational;
               needs PostgreSQL's binaries, as the tests do)

    python benchmarks/bench_store_sql.py --count 3000 --rounds 3

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crm_automation.store.dialect import POSTGRESQL, SQLITE  # noqa: E402
from crm_automation.store.repo import Store  # noqa: E402
from crm_automation.store.sends import Gate, Sent  # noqa: E402

NOW = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
AT = "2026-12-07T02:00:00Z"
SENT = "UPDATE sends SET status = 'sent', sent_at = ?, error = NULL WHERE id = ?"
ACTIVITY = ("INSERT INTO activities (customer_key, kind, occurred_at, subject, body, message_id, in_reply_to, "
            "campaign, step, source, details, logged_at, digest) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT DO NOTHING")
GATE = "SELECT EXISTS (SELECT 1 FROM suppressions WHERE email = ?), (SELECT email_status FROM customers WHERE key = ?)"
SENDING = ("UPDATE sends SET status = 'sending', attempts = attempts + 1, next_attempt_at = ? "
           "WHERE id = ? AND status = 'queued' AND message_id = ?")


def build(folder: Path, n: int) -> Path:
    path = folder / "base.sqlite"
    store = Store.open(path)
    with store.transaction():
        store.conn.executemany(
            "INSERT INTO customers (key, row, data, first_seen, last_changed, email_status, present) "
            "VALUES (?, ?, '{}', ?, ?, 'ok', 1)", [(f"c{i}@example.com", i, AT, AT) for i in range(n)])
        store.conn.executemany(
            "INSERT INTO sends (campaign, step, step_id, customer_key, status, message_id, queued_at, email, attempts, "
            "kind) VALUES ('promo', 0, '0', ?, 'queued', ?, ?, ?, 0, 'campaign_step')",
            [(f"c{i}@example.com", f"<m{i}@example.com>", AT, f"c{i}@example.com") for i in range(n)])
    store.close()
    return path


def _activity(i: int) -> tuple[object, ...]:
    return (f"c{i}@example.com", "email_out", AT, "Hello", "Body text " * 20, f"<m{i}@example.com>", None, "promo", 0,
            "smtp", "{}", AT, None)


def run_store(path: Path, n: int) -> float:
    store = Store.open(path)
    gate_rule: Callable[[bool, str | None], str | None] = lambda s, st: None  # noqa: E731
    prev: Sent | None = None
    store.claim_sends("bench", NOW, n)  # the send pass claims its sends first (issue #20), one commit a batch
    t = time.process_time()
    for i in range(1, n + 1):
        key = f"c{i - 1}@example.com"
        store.mark_sent_and_sending(prev, i, f"<m{i - 1}@example.com>", NOW, "bench", Gate(key, key, gate_rule))
        prev = Sent(i, NOW, key, "promo", 0, f"<m{i - 1}@example.com>", "Hello", "Body text " * 20, "smtp")
    dt = time.process_time() - t
    store.close()
    return dt


def _raw(path: Path, translate: Callable[[str], str], *, returning: bool = False) -> Callable[[int], float]:
    def run(n: int) -> float:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        activity = ACTIVITY + (" RETURNING id" if returning else "")
        t = time.process_time()
        for i in range(1, n + 1):
            conn.execute(translate("BEGIN IMMEDIATE"))
            if i > 1:
                conn.execute(translate(SENT), (AT, i - 1))
                cur = conn.execute(translate(activity), _activity(i - 2))
                _ = cur.fetchone() if returning else cur.lastrowid
            key = f"c{i - 1}@example.com"
            conn.execute(translate(GATE), (key, key)).fetchone()
            conn.execute(translate(SENDING), (AT, i, f"<m{i - 1}@example.com>"))
            conn.execute(translate("COMMIT"))
        dt = time.process_time() - t
        conn.close()
        return dt
    return run


def _both(text: str) -> str:
    POSTGRESQL.sql(text)  # the cache lookup a translating connection pays per statement
    return SQLITE.sql(text)


def run_sqlalchemy(path: Path, n: int) -> float:
    from sqlalchemy import create_engine, event, text

    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    sent = text("UPDATE sends SET status = 'sent', sent_at = :at, error = NULL WHERE id = :id")
    activity = text("INSERT INTO activities (customer_key, kind, occurred_at, subject, body, message_id, in_reply_to, "
                    "campaign, step, source, details, logged_at, digest) VALUES (:k, :kind, :at, :subj, :body, :mid, "
                    ":irt, :camp, :step, :src, :det, :at, :dig) ON CONFLICT DO NOTHING")
    gate = text("SELECT EXISTS (SELECT 1 FROM suppressions WHERE email = :e), "
                "(SELECT email_status FROM customers WHERE key = :k)")
    sending = text("UPDATE sends SET status = 'sending', attempts = attempts + 1, next_attempt_at = :at "
                   "WHERE id = :id AND status = 'queued' AND message_id = :mid")
    with engine.connect() as conn:
        t = time.process_time()
        for i in range(1, n + 1):
            with conn.begin():
                if i > 1:
                    conn.execute(sent, {"at": AT, "id": i - 1})
                    a = _activity(i - 2)
                    conn.execute(activity, {"k": a[0], "kind": a[1], "at": AT, "subj": a[3], "body": a[4],
                                            "mid": a[5], "irt": None, "camp": "promo", "step": 0, "src": "smtp",
                                            "det": "{}", "dig": None})
                key = f"c{i - 1}@example.com"
                conn.execute(gate, {"e": key, "k": key}).fetchone()
                conn.execute(sending, {"at": AT, "id": i, "mid": f"<m{i - 1}@example.com>"})
        dt = time.process_time() - t
    engine.dispose()
    return dt


def run_postgresql(url: str, n: int) -> float:
    import psycopg

    from tests.fixtures.postgres import TEMPLATE  # noqa: F401  (the cluster's collation and template)

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS sends, activities, suppressions, customers")
        conn.execute("CREATE TABLE customers (key text PRIMARY KEY, row integer, data text, first_seen text, "
                     "last_changed text, email_status text, present integer)")
        conn.execute("CREATE TABLE suppressions (email text PRIMARY KEY, reason text, at text, source text)")
        conn.execute("CREATE TABLE sends (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, campaign text, "
                     "step integer, step_id text, customer_key text, status text, message_id text, queued_at text, "
                     "sent_at text, error text, email text, attempts integer, next_attempt_at text, kind text)")
        conn.execute("CREATE UNIQUE INDEX ON sends (campaign, step_id, customer_key)")
        conn.execute("CREATE TABLE activities (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
                     "customer_key text, kind text, occurred_at text, subject text, body text, message_id text, "
                     "in_reply_to text, campaign text, step integer, source text, details text, logged_at text, "
                     "digest text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO customers VALUES (%s, %s, '{}', %s, %s, 'ok', 1)",
                            [(f"c{i}@example.com", i, AT, AT) for i in range(n)])
            cur.executemany("INSERT INTO sends (id, campaign, step, step_id, customer_key, status, message_id, "
                            "queued_at, email, attempts, kind) VALUES (%s, 'promo', 0, '0', %s, 'queued', %s, %s, %s, "
                            "0, 'campaign_step')",
                            [(i + 1, f"c{i}@example.com", f"<m{i}@example.com>", AT, f"c{i}@example.com")
                             for i in range(n)])
        sql = POSTGRESQL.sql
        t = time.process_time()
        for i in range(1, n + 1):
            conn.execute("BEGIN")
            if i > 1:
                conn.execute(sql(SENT), (AT, i - 1))
                conn.execute(sql(ACTIVITY + " RETURNING id"), _activity(i - 2)).fetchone()
            key = f"c{i - 1}@example.com"
            conn.execute(sql(GATE), (key, key)).fetchone()
            conn.execute(sql(SENDING), (AT, i, f"<m{i - 1}@example.com>"))
            conn.execute("COMMIT")
        return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-postgresql", action="store_true")
    args = ap.parse_args()
    n = args.count
    # /dev/shm where there is one: the disk's noise (the machine is shared) is not what is compared here
    folder = Path(tempfile.mkdtemp(prefix="bench-store-sql-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    base = build(folder, n)
    variants: dict[str, Callable[[Path, int], float]] = {
        "store": run_store,
        "sqlite3": lambda p, k: _raw(p, SQLITE.sql)(k),
        "dialect": lambda p, k: _raw(p, SQLITE.sql)(k),
        "pyformat": lambda p, k: _raw(p, _both)(k),
        "returning": lambda p, k: _raw(p, SQLITE.sql, returning=True)(k),
    }
    try:
        import sqlalchemy  # noqa: F401

        variants["sqlalchemy"] = run_sqlalchemy
    except ImportError:
        print("(sqlalchemy not installed: its variant is left out)")
    cluster = None
    if not args.no_postgresql:
        from tests.fixtures.postgres import find_pg_bin, start_postgres

        pg_bin = find_pg_bin()
        if pg_bin is not None:
            cluster = start_postgres(pg_bin)
            url = cluster.create_database("bench")
            variants["postgresql"] = lambda _p, k: run_postgresql(url, k)
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        order = list(variants.items())
        for r in range(args.rounds):
            random.Random(r).shuffle(order)  # no variant always runs first, or right after the noisiest one
            for name, fn in order:
                copy = folder / f"{name}.sqlite"
                shutil.copy(base, copy)
                times[name].append(fn(copy, n) / n * 1e6)
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{copy}{suffix}").unlink(missing_ok=True)
    finally:
        if cluster is not None:
            from tests.fixtures.postgres import stop_postgres

            stop_postgres(cluster)
        shutil.rmtree(folder, ignore_errors=True)
    floor = statistics.median(times["sqlite3"])
    best = min(times["sqlite3"])
    print(f"{n} messages, {args.rounds} rounds, shuffled; CPU microseconds of this process per message "
          "(postgresql: the server's CPU is not counted): median, min; each vs bare sqlite3")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<11} {med:8.1f} {min(ts):8.1f}   {med / floor:5.2f}x {min(ts) / best:5.2f}x")


if __name__ == "__main__":
    main()
