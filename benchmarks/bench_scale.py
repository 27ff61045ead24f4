"""Several workers on one PostgreSQL log, side by side with one, and with SQLite (issue #20 "Performance").

One campaign of N customers (default 20,000), queued first (untimed), then
handed over by W `crm-automation send` processes started together on the
same workspace, to one loopback aiosmtpd server in a separate process that
waits a fixed time before answering each message (default 20 ms: a real
server's latency, so the work is latency-bound and workers should add up
even on 2 cores). Timed from the start of the processes until the last one
exits; every message counted by the server, none twice (the log's ``sent``
count must equal N and the server's count).

  PostgreSQL, 1, 2 and 4 workers    target: 4 workers >= 3x the throughput of 1
  SQLite, 1 worker                  (its lock file allows one)

Then the store's own cost, with the counting-only sink of bench_send.py (no
delay): one worker on PostgreSQL against one on SQLite, target within 1.5x.

    python benchmarks/bench_scale.py                      # 20,000 messages, 20 ms: ~20 minutes
    python benchmarks/bench_scale.py --count 2000         # a quick look

Not part of the test suite. Needs the distribution's PostgreSQL server
binaries (a throwaway cluster is started on loopback, as the tests do).
Network: 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_send import REPO, _env, make_rows, ours_cmd, setup_ours, write_csv

from tests.fixtures.postgres import PgCluster, find_pg_bin, start_postgres, stop_postgres

TZ = ZoneInfo("Asia/Shanghai")


# -- the sink (child process) -----------------------------------------------------------------------------


def _serve(conn, counter, delay: float) -> None:
    import asyncio

    from aiosmtpd.smtp import SMTP

    class Slow:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            if delay:
                await asyncio.sleep(delay)
            counter.value += 1
            return "250 OK"

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(
        lambda: SMTP(Slow(), hostname="bench.local", ident="bench", loop=loop), "127.0.0.1", 0))
    conn.send(server.sockets[0].getsockname()[1])
    loop.run_forever()


class Sink:
    """A loopback SMTP server in its own process that waits ``delay`` seconds before accepting each message."""

    def __init__(self, delay: float) -> None:
        ctx = mp.get_context("spawn")
        self.counter = ctx.Value("q", 0, lock=False)
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, self.counter, delay), daemon=True)
        self.proc.start()
        if not parent.poll(30):
            raise SystemExit("the SMTP sink did not start")
        self.port: int = parent.recv()

    @property
    def count(self) -> int:
        return int(self.counter.value)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(5)


# -- one case ---------------------------------------------------------------------------------------------


def _closed_window() -> str:
    """A send window that does not hold now (local time): the queueing pass plans everything and sends nothing."""
    start = datetime.now(TZ) + timedelta(hours=2)
    end = start + timedelta(hours=1)
    return f"{start:%H:%M}-{end:%H:%M}"


def _set_database(cfg: Path, database: str, extra: str = "") -> None:
    text = re.sub(r'^database = ".*"$', f'database = "{database}"', cfg.read_text(encoding="utf-8"), flags=re.M)
    text = re.sub(r"^send_window = .*\n", "", text, flags=re.M)
    cfg.write_text(text.replace("[outbound]\n", f"[outbound]\n{extra}"), encoding="utf-8")


def _sent(database: str, cfg: Path) -> int:
    if database.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(database) as conn:
            row = conn.execute("SELECT COUNT(*) FROM sends WHERE status = 'sent'").fetchone()
            return int(row[0]) if row else 0
    con = sqlite3.connect(cfg.parent / database)
    try:
        return int(con.execute("SELECT COUNT(*) FROM sends WHERE status = 'sent'").fetchone()[0])
    finally:
        con.close()


def _server_cpu(cluster: PgCluster | None) -> float:
    """CPU seconds of the cluster's ended sessions: the postmaster's reaped children (its cutime + cstime)."""
    if cluster is None:
        return 0.0
    pid = (cluster.folder / "data" / "postmaster.pid").read_text().split()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def run_case(work: Path, sink: Sink, n: int, workers: int, database: str,
             cpu: list[tuple[float, float]] | None = None, cluster: PgCluster | None = None) -> float:
    """Queue N sends (untimed), then time W `send` processes handing them over; seconds.

    ``cpu``: (the workers' CPU, the server sessions' CPU) in seconds is appended to it.
    """
    root = work / f"case-{time.monotonic_ns()}"
    root.mkdir()
    shutil.copy(work / "customers.csv", root / "customers.csv")
    cfg = setup_ours(root, sink.port)
    _set_database(cfg, database, f'send_window = "{_closed_window()}"\n')
    for verb in ("sync", "send"):  # send: everything queued, nothing handed over (outside the window)
        r = subprocess.run(ours_cmd(cfg, verb), env=_env(), capture_output=True, text=True, check=False)
        if r.returncode not in (0, 1):
            raise SystemExit(f"{verb} failed ({r.returncode}):\n{r.stderr}")
    _set_database(cfg, database)
    before = sink.count
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    server = _server_cpu(cluster)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(ours_cmd(cfg, "send"), env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(workers)]
    errors = [(p.wait(), p.stderr.read() if p.stderr else "") for p in procs]
    elapsed = time.perf_counter() - t0
    if cpu is not None:
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        time.sleep(0.2)  # the postmaster reaps the workers' ended sessions
        cpu.append((after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime,
                    _server_cpu(cluster) - server))
    failed = [e for rc, e in errors if rc not in (0, 1)]
    if failed:
        raise SystemExit(f"a worker failed:\n{failed[0]}")
    got, sent = sink.count - before, _sent(database, cfg)
    if got != n or sent != n:
        raise SystemExit(f"expected {n} messages: the server counted {got}, the log says {sent} sent")
    shutil.rmtree(root / "ws", ignore_errors=True)
    return elapsed


def _database(cluster: PgCluster | None, engine: str) -> str:
    if engine == "sqlite" or cluster is None:
        return "var/crm.sqlite"
    name = f"bench_{time.monotonic_ns()}"
    return cluster.create_database(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=20_000, help="customers / messages (default 20,000)")
    ap.add_argument("--delay-ms", type=float, default=20.0, help="the sink's wait per message (default 20)")
    ap.add_argument("--workers", default="1,2,4", help="PostgreSQL worker counts (default 1,2,4)")
    ap.add_argument("--store-count", type=int, default=5_000,
                    help="messages for the counting-only comparison of the engines (default 5,000; 0: skip)")
    args = ap.parse_args()
    n = args.count
    pg_bin = find_pg_bin()
    if pg_bin is None:
        raise SystemExit("no PostgreSQL server binaries (apt-get install postgresql)")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "crm_automation")], check=False,
                   stdout=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="crm-bench-scale-"))
    cluster = start_postgres(pg_bin)
    rows: list[tuple[str, int, float, int]] = []
    try:
        write_csv(work / "customers.csv", make_rows(n))
        sink = Sink(args.delay_ms / 1000)
        try:
            print(f"{n} messages, a sink waiting {args.delay_ms:g} ms per message on 127.0.0.1:{sink.port}\n")
            for w in [int(x) for x in args.workers.split(",")]:
                secs = run_case(work, sink, n, w, _database(cluster, "postgresql"))
                rows.append(("PostgreSQL", w, secs, n))
                print(f"  PostgreSQL  {w} worker(s)  {secs:7.1f} s  {n / secs:7.1f} msg/s", flush=True)
            secs = run_case(work, sink, n, 1, _database(None, "sqlite"))
            rows.append(("SQLite", 1, secs, n))
            print(f"  SQLite      1 worker     {secs:7.1f} s  {n / secs:7.1f} msg/s", flush=True)
        finally:
            sink.stop()
        one_pg = next((s for e, w, s, _ in rows if e == "PostgreSQL" and w == 1), None)
        print()
        for engine, w, secs, count in rows:
            vs = f"{one_pg / secs:5.2f}x one PostgreSQL worker" if one_pg else ""
            print(f"| {engine} | {w} | {secs:.1f} s | {count / secs:.1f} msg/s | {vs} |")
        four = next((s for e, w, s, _ in rows if e == "PostgreSQL" and w == 4), None)
        if one_pg and four:
            print(f"\n4 workers / 1 worker on PostgreSQL: {one_pg / four:.2f}x  (target >= 3x)")
        if args.store_count:
            _engines(work, args.store_count)
    finally:
        stop_postgres(cluster)
        shutil.rmtree(work, ignore_errors=True)


def _engines(work: Path, n: int) -> None:
    """One worker, the counting-only sink: PostgreSQL's cost against SQLite's (target within 1.5x)."""
    pg_bin = find_pg_bin()
    assert pg_bin is not None
    cluster = start_postgres(pg_bin)
    write_csv(work / "customers.csv", make_rows(n))
    sink = Sink(0.0)
    pg: list[float] = []
    lite: list[float] = []
    pg_cpu: list[tuple[float, float]] = []
    lite_cpu: list[tuple[float, float]] = []
    try:
        for _ in range(3):  # alternated: on a shared machine the load drifts, and each engine should meet the same
            pg.append(run_case(work, sink, n, 1, _database(cluster, "postgresql"), pg_cpu, cluster))
            lite.append(run_case(work, sink, n, 1, _database(None, "sqlite"), lite_cpu))
    finally:
        sink.stop()
        stop_postgres(cluster)
    pg_s, lite_s = sorted(pg)[1], sorted(lite)[1]
    print(f"\n{n} messages to a counting-only sink, one worker, median of 3:")
    print(f"  PostgreSQL {pg_s:6.2f} s ({pg_s * 1000 / n:.2f} ms/message)")
    print(f"  SQLite     {lite_s:6.2f} s ({lite_s * 1000 / n:.2f} ms/message)")
    print(f"  PostgreSQL / SQLite: {pg_s / lite_s:.2f}x  (target <= 1.5x)")
    # CPU is what a shared machine disturbs least: the worker process's, and the server's sessions' (PostgreSQL).
    w_pg, s_pg = (statistics.median(c[i] for c in pg_cpu) * 1000 / n for i in (0, 1))
    w_lite = statistics.median(c[0] for c in lite_cpu) * 1000 / n
    print(f"  CPU per message, median: PostgreSQL worker {w_pg:.2f} + server {s_pg:.2f} ms, "
          f"SQLite worker {w_lite:.2f} ms")


if __name__ == "__main__":
    main()
