"""The send loop's store work on PostgreSQL, message by message (issue #20: one worker within 1.5x of SQLite).

The hot path of a send pass without the SMTP part: a claim of 16 every 16
messages, then per message ``Store.mark_sent_and_sending`` (the last
message's ``sent`` mark and ``email_out`` activity, the gate's read, the next
``sending`` mark, one commit), on a migrated log of N queued sends. For each
variant: wall time and this process's CPU time per message, the statements
the store wrote per message (``PgGuarded.trace``) and the client/server round
trips (psycopg's libpq trace: each ``Sync`` or simple ``Query`` the client
sent and waited for). Rounds interleaved, median reported.

  store       the store as it is (Store.open(url), the real schema)
  bare        main's statements on a bare psycopg connection (autocommit,
              BEGIN ... COMMIT, one round trip each): the floor of the
              one-statement-a-round-trip way the store had before
  pipe        the store's statements now on a bare psycopg connection in
              pipeline mode (no BEGIN/COMMIT, the gate's read and the end
              of the unit the only waits): the floor of the way it has now
  sqlite      the store on a SQLite file (WAL, synchronous=NORMAL) in the same folder

    python benchmarks/bench_pg_loop.py --count 3000 --rounds 3

Needs the distribution's PostgreSQL server binaries (a throwaway cluster on
loopback, fsync=off, as the tests'). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crm_automation.store.dialect import POSTGRESQL  # noqa: E402
from crm_automation.store.repo import Store  # noqa: E402
from crm_automation.store.sends import Gate, Sent  # noqa: E402
from tests.fixtures.postgres import find_pg_bin, start_postgres, stop_postgres  # noqa: E402

NOW = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
AT = "2026-12-07T02:00:00Z"
BATCH = 16


def seed(store: Store, n: int) -> None:
    with store.transaction():
        store.conn.executemany(
            "INSERT INTO customers (key, row, data, first_seen, last_changed, email_status, present) "
            "VALUES (?, ?, '{}', ?, ?, 'ok', 1)", [(f"c{i}@example.com", i, AT, AT) for i in range(n)])
        store.conn.executemany(
            "INSERT INTO sends (campaign, step, step_id, customer_key, status, message_id, queued_at, email, attempts, "
            "kind) VALUES ('promo', 0, '0', ?, 'queued', ?, ?, ?, 0, 'campaign_step')",
            [(f"c{i}@example.com", f"<m{i}@example.com>", AT, f"c{i}@example.com") for i in range(n)])


def _rule(_suppressed: bool, _status: str | None) -> str | None:
    return None


def server_cpu(store: Store) -> float:
    """CPU seconds the store's server process (its backend) has used so far; 0 for SQLite."""
    info = getattr(store.conn.raw, "info", None)
    if info is None:
        return 0.0
    fields = Path(f"/proc/{info.backend_pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def store_loop(store: Store, n: int) -> tuple[float, float]:
    """(wall, cpu) seconds for n messages through the store."""
    prev: Sent | None = None
    after = 0
    pending: list[int] = []
    w, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        if not pending:
            got = store.claim_sends("bench", NOW, BATCH, after=after)
            pending = [s.id for s in got]
            after = pending[-1]
        i = pending.pop(0)
        key = f"c{i - 1}@example.com"
        store.mark_sent_and_sending(prev, i, f"<m{i - 1}@example.com>", NOW, "bench", Gate(key, key, _rule))
        prev = Sent(i, NOW, key, "promo", 0, f"<m{i - 1}@example.com>", "Hello", "Body text " * 20, "smtp")
    if prev is not None:
        store.mark_sent(prev.send_id, prev.at, customer_key=prev.customer_key, campaign=prev.campaign, step=prev.step,
                        message_id=prev.message_id, subject=prev.subject, body=prev.body, source=prev.source)
    return time.perf_counter() - w, time.process_time() - c


def bare_loop(url: str, n: int) -> tuple[float, float]:
    """The same statements, one round trip each, on a bare psycopg connection."""
    import psycopg

    sql = POSTGRESQL.sql
    claim = sql("UPDATE sends SET holder = ? WHERE id IN (SELECT id FROM sends WHERE status = 'queued' AND id > ? "
                "ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED) RETURNING id")
    sent = sql("UPDATE sends SET status = 'sent', sent_at = ?, error = NULL WHERE id = ?")
    act = sql("INSERT INTO activities (customer_key, kind, occurred_at, subject, body, message_id, in_reply_to, "
              "campaign, step, source, details, logged_at, digest) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
              "ON CONFLICT DO NOTHING RETURNING id")
    gate = sql("SELECT EXISTS (SELECT 1 FROM suppressions WHERE email = ?), "
               "(SELECT email_status FROM customers WHERE key = ?)")
    sending = sql("UPDATE sends SET status = 'sending', attempts = attempts + 1, next_attempt_at = ? "
                  "WHERE id = ? AND status = 'queued' AND holder = ? AND message_id = ?")
    with psycopg.connect(url, autocommit=True) as conn:
        prev: int | None = None
        after = 0
        pending: list[int] = []
        w, c = time.perf_counter(), time.process_time()
        for _ in range(n):
            if not pending:
                conn.execute("BEGIN")
                pending = sorted(r[0] for r in conn.execute(claim, ("bare", after, BATCH)).fetchall())
                conn.execute("COMMIT")
                after = pending[-1]
            i = pending.pop(0)
            conn.execute("BEGIN")
            if prev is not None:
                conn.execute(sent, (AT, prev))
                conn.execute(act, (f"c{prev - 1}@example.com", "email_out", AT, "Hello", "Body text " * 20,
                                   f"<m{prev - 1}@example.com>", None, "promo", 0, "smtp", "{}", AT, None)).fetchone()
            key = f"c{i - 1}@example.com"
            conn.execute(gate, (key, key)).fetchone()
            conn.execute(sending, (AT, i, "bare", f"<m{i - 1}@example.com>"))
            conn.execute("COMMIT")
            prev = i
        return time.perf_counter() - w, time.process_time() - c


def pipe_loop(url: str, n: int) -> tuple[float, float]:
    """The store's statements now (two marks, no BEGIN/COMMIT), pipelined, on a bare psycopg connection."""
    import psycopg

    sql = POSTGRESQL.sql
    claim = sql("UPDATE sends SET holder = ? WHERE id IN (SELECT id FROM sends WHERE status = 'queued' AND id > ? "
                "ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED) RETURNING id")
    sent = sql("UPDATE sends SET status = 'sent', sent_at = ?, error = NULL WHERE id = ?")
    act = sql("INSERT INTO activities (customer_key, kind, occurred_at, subject, body, message_id, in_reply_to, "
              "campaign, step, source, details, logged_at, digest) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
              "ON CONFLICT DO NOTHING")
    gate = sql("SELECT EXISTS (SELECT 1 FROM suppressions WHERE email = ?), "
               "(SELECT email_status FROM customers WHERE key = ?)")
    same = sql("UPDATE sends SET status = 'sending', attempts = attempts + 1, next_attempt_at = ?, "
               "account = COALESCE(?, account) WHERE id = ? AND status = 'queued' AND holder = ? AND message_id = ?")
    other = sql("UPDATE sends SET status = 'sending', message_id = ?, attempts = attempts + 1, next_attempt_at = ?, "
                "account = COALESCE(?, account) WHERE id = ? AND status = 'queued' AND holder = ? "
                "AND (message_id IS NULL OR message_id <> ?)")
    with psycopg.connect(url, autocommit=True) as conn:
        prev: int | None = None
        after = 0
        pending: list[int] = []
        w, c = time.perf_counter(), time.process_time()
        for _ in range(n):
            if not pending:
                with conn.pipeline():
                    pending = sorted(r[0] for r in conn.execute(claim, ("pipe", after, BATCH)).fetchall())
                after = pending[-1]
            i = pending.pop(0)
            with conn.pipeline():
                if prev is not None:
                    conn.execute(sent, (AT, prev))
                    conn.execute(act, (f"c{prev - 1}@example.com", "email_out", AT, "Hello", "Body text " * 20,
                                       f"<m{prev - 1}@example.com>", None, "promo", 0, "smtp", "{}", AT, None))
                key = f"c{i - 1}@example.com"
                conn.execute(gate, (key, key)).fetchone()
                mid = f"<m{i - 1}@example.com>"
                a = conn.execute(same, (AT, None, i, "pipe", mid))
                b = conn.execute(other, (mid, AT, None, i, "pipe", mid))
            assert a.rowcount + b.rowcount == 1
            prev = i
        return time.perf_counter() - w, time.process_time() - c


class Counter:
    """Statements the store wrote (its trace hook) and round trips to the server (libpq's trace)."""

    def __init__(self) -> None:
        self.statements = 0

    def __call__(self, _sql: str) -> None:
        self.statements += 1


def round_trips(trace_file: Path) -> int:
    """How often the client sent something, then read: each turn from sending (F) to reading (B) is one wait."""
    n, last = 0, ""
    for line in trace_file.read_text(errors="replace").splitlines():
        direction = line.split("\t", 1)[0]  # timestamps suppressed: the direction comes first
        if direction == "B" and last == "F":
            n += 1
        if direction in ("F", "B"):
            last = direction
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="cProfile one store round, print the top of it")
    args = ap.parse_args()
    pg_bin = find_pg_bin()
    if pg_bin is None:
        raise SystemExit("no PostgreSQL server binaries")
    cluster = start_postgres(pg_bin)
    folder = Path(tempfile.mkdtemp(prefix="crm-bench-pgloop-"))
    n = args.count
    results: dict[str, list[tuple[float, float]]] = {"store": [], "bare": [], "pipe": [], "sqlite": []}
    per_msg: dict[str, float] = {}
    server: list[float] = []
    try:
        def fresh_pg() -> Store:
            url = cluster.create_database(f"loop_{time.monotonic_ns()}")
            store = Store.open(url)
            seed(store, n)
            return store

        def run_store() -> tuple[float, float]:
            store = fresh_pg()
            try:
                before = server_cpu(store)
                got = store_loop(store, n)
                server.append(server_cpu(store) - before)
                return got
            finally:
                store.close()

        def run_bare() -> tuple[float, float]:
            return bare_loop(bare_url(), n)

        def bare_url() -> str:
            name = f"loop_{time.monotonic_ns()}"
            url = cluster.create_database(name)
            store = Store.open(url)
            seed(store, n)
            store.close()
            return url

        def run_pipe() -> tuple[float, float]:
            return pipe_loop(bare_url(), n)

        def run_sqlite() -> tuple[float, float]:
            store = Store.open(folder / f"s{time.monotonic_ns()}.sqlite")
            seed(store, n)
            try:
                return store_loop(store, n)
            finally:
                store.close()

        runs: dict[str, Callable[[], tuple[float, float]]] = {"store": run_store, "bare": run_bare,
                                                               "pipe": run_pipe, "sqlite": run_sqlite}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                results[name].append(fn())
        # One traced run: statements and round trips per message.
        from psycopg import pq

        store = fresh_pg()
        counter = Counter()
        store.conn.trace = counter
        trace_file = folder / "libpq.trace"
        with trace_file.open("w") as fh:
            store.conn.raw.pgconn.trace(fh.fileno())
            store.conn.raw.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            store_loop(store, n)
            store.conn.raw.pgconn.untrace()
        store.close()
        per_msg["statements"] = counter.statements / n
        per_msg["round_trips"] = round_trips(trace_file) / n
        if args.profile:
            import cProfile
            import pstats

            store = fresh_pg()
            prof = cProfile.Profile()
            prof.enable()
            store_loop(store, n)
            prof.disable()
            store.close()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    finally:
        stop_postgres(cluster)
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{n} messages, median of {args.rounds} rounds (ms per message)")
    print(f"{'variant':8} {'wall':>7} {'cpu':>7}")
    for name, rs in results.items():
        wall = statistics.median(r[0] for r in rs) * 1000 / n
        cpu = statistics.median(r[1] for r in rs) * 1000 / n
        print(f"{name:8} {wall:7.3f} {cpu:7.3f}")
    print(f"store on PostgreSQL: server process CPU {statistics.median(server) * 1000 / n:.3f} ms a message")
    print(f"store on PostgreSQL: {per_msg['statements']:.2f} statements, {per_msg['round_trips']:.2f} round trips "
          "a message")


if __name__ == "__main__":
    main()
