"""What ``crm-automation db copy --to postgresql://...`` costs on a big log (issue #20, item 4).

The log: bench_pipeline.py's (100,000 customers, 1,000,000 activities, about
520,000 sends; made by the product's own sync and send passes, cached under
its ``--cache``), copied into a work folder first so the cached build is
never touched (the copy's first step upgrades an older schema in place).
The server: a throwaway cluster as the tests start it
(tests/fixtures/postgres.py, ``fsync=off``: the figures leave out the
server's disk flushes, as a cluster on a battery-backed or cloud disk
nearly does), on this machine, over loopback TCP.

Timed, each as one whole process of the real CLI (wall seconds and peak RSS):
``db copy --dry-run`` (counts only), the copy into an empty database, the
rerun that finds nothing new (it reads and digests every table), and
``psql``-free checks of what arrived (counts per table, by the copy's own
verification).

    python benchmarks/bench_db_copy.py                      # 100k x 1M (builds the log once, ~5 min)
    python benchmarks/bench_db_copy.py --log /path/to/workspace   # any workspace folder with config.toml
    python benchmarks/bench_db_copy.py --customers 10000 --activities 100000

Not part of the test suite; writes only under a temporary folder (and the
bench_pipeline cache when it builds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_pass import cli, env, must, run_rusage

from tests.fixtures.postgres import find_pg_bin, start_postgres, stop_postgres

Rec = dict[str, Any]


def run_cpu(cmd: list[str]) -> Rec:
    """One whole process: wall time, its CPU time (user + system), peak RSS, exit code and output."""
    t = time.perf_counter()
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env())
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read().decode("utf-8", "replace"), fe.read().decode("utf-8", "replace")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024,
            "rc": os.waitstatus_to_exitcode(status), "out": out, "err": err}


def workspace(args: argparse.Namespace, work: Path, log: Any) -> Path:
    """A private copy of the benchmark's workspace (the cached build stays as it is)."""
    if args.log is not None:
        src = args.log
    else:
        import bench_pipeline

        src, _, built = bench_pipeline.cached(args.cache, args.customers, args.activities, rebuild=False)
        log(f"log: {src} ({'built now' if built else 'cached'})")
    ws = work / "ws"
    shutil.copytree(src, ws, ignore=shutil.ignore_patterns("outbox", "*.lock"))
    return ws


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log", type=Path, default=None, help="a workspace folder (config.toml, var/crm.sqlite)")
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--activities", type=int, default=1_000_000)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "crm-bench-pipeline")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    pg_bin = find_pg_bin()
    if pg_bin is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install -y postgresql)")
    work = Path(tempfile.mkdtemp(prefix="bench-db-copy-", dir=args.work))
    cluster = start_postgres(pg_bin)
    try:
        ws = workspace(args, work, log)
        cfg = ws / "config.toml"
        upgrade = must(run_rusage(cli(cfg, "suppress", "add", "bench-upgrade@example.com")), "upgrading the log")
        log(f"upgrade to the current schema (a write): {upgrade['wall']:.1f} s")
        url = cluster.create_database("bench")
        rec: Rec = {"db_mb": round((ws / "var" / "crm.sqlite").stat().st_size / 1e6)}
        for name, extra in (("dry_run", ["--dry-run"]), ("copy", []), ("rerun", [])):
            res = must(run_cpu(cli(cfg, "--json", "db", "copy", "--to", url, *extra)), f"db copy {name}")
            out = json.loads(res["out"])
            rec[name] = {"wall_s": round(res["wall"], 2), "client_cpu_s": round(res["cpu"], 2),
                         "rss_mb": round(res["rss_mb"]), "load": round(os.getloadavg()[0], 1), "outcome": out["outcome"],
                         "rows": sum(t["rows"] for t in out["tables"]), "copied": out["copied"],
                         "tables": {t["table"]: t["rows"] for t in out["tables"] if t["rows"] >= 10_000}}
            log(f"{name}: {res['wall']:.1f} s (client CPU {res['cpu']:.1f} s), {res['rss_mb']:.0f} MB, "
                f"{out['outcome']}, {out['copied']} rows")
        rec["rows_per_s"] = round(rec["copy"]["rows"] / rec["copy"]["wall_s"])
        print(json.dumps(rec, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in rec.items()))
    finally:
        stop_postgres(cluster)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
