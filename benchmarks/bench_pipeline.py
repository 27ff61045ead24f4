"""What ``report pipeline`` and one day's digests cost on a big log, beside a plain pandas group-by (issue #21).

Target (issue #21, "Performance"): 100,000 customers, 1,000,000 activities,
50 owners: ``report pipeline`` (the use case :func:`crm_automation.app.pipeline.pipeline`,
what the CLI and the ``/pipeline`` page call) and one day's digests for the
50 owners (:func:`crm_automation.app.digest.digests_in` for every owner at
once, what the send pass asks when it plans the day's digests; rendering
and sending the 50 emails are not timed) under 2 s each, and within 2x of
the floor: the same rows read from the log by the same store reads, put in
pandas DataFrames and grouped by stage and owner (a count and a median),
with nothing else (no staleness rule, no first-response pairing, no result
objects). The ratio says what the use case adds on top of reading.

How the log is built (once, cached under ``--cache``): bench_pages.py's
workspace and history (the product's own ``sync`` of a CSV sheet, then a
seeded 90-day history in plain SQL: campaign sends, replies, auto-replies,
bounces, unsubscribes, clicks, stage changes filling the rest), with the
sheet's owners spread over 50 addresses, ``[stale_after_days]`` for three
stages, and the team's answers from the Sent folder (``reply_out``, naming
the reply they answer) for six in ten customer replies, within 1-30 hours;
as many stage changes are left out, so the log holds ``--activities`` in all.
Before that the log is settled as a worker's is: real send passes (the
product's ``send``, to a file outbox, the clock at the benchmark's "now")
until one sends nothing, so the planner's record (``plan_due``, its mark)
is what a worker running passes all day leaves, and the digests' "follow-ups
due today" asks the planner about the customers due today, not about
everyone as on a log no pass ever planned (build 1 had that flaw: 31-39 s).
The settling passes send what the seeded history left due (about 73,000
emails, sent "today": the digests' follow-ups sent today are many); as many
of the newest clicks are removed to keep ``--activities`` in all.

    python benchmarks/bench_pipeline.py                        # 100k x 1M
    python benchmarks/bench_pipeline.py --customers 10000 --activities 100000 --runs 5
    python benchmarks/bench_pipeline.py --json

Figures are seconds in this process (wall, median of ``--runs``; CPU time
beside it: wall adds what other processes took of the machine). Not part of
the test suite; writes nothing outside --cache.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pages
from bench_pass import cli, iso, must, run_rusage

Rec = dict[str, Any]
BUILD_VERSION = 2  # bump when the generated data changes: cached builds of another version are rebuilt
OWNERS = 50
TARGET_S = 2.0
NOW = bench_pages.NOW
START = bench_pages.START
STALE = '\n[stale_after_days]\n"意向" = 14\n"报价" = 7\n"成交" = 30\n'


def write_workspace(ws: Path, customers: int) -> None:
    bench_pages.write_workspace(ws, customers)
    mapping = ws / "mappings" / "customers.toml"
    mapping.write_text(mapping.read_text(encoding="utf-8") + STALE, encoding="utf-8")
    rng = random.Random(19)
    with (ws / "customers.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["邮箱", "客户名称", "公司", "阶段", "负责人邮箱"])
        for i in range(customers):
            name, company, email = bench_pages.person(i, rng)
            w.writerow([email, name, company, bench_pages.STAGES[i % 5], f"owner{i % OWNERS}@example.com"])


def add_team_replies(db: Path, activities: int) -> None:
    """``reply_out`` for six in ten customer replies (naming them), as many stage changes removed."""
    rng = random.Random(2121)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    rows = conn.execute("SELECT customer_key, occurred_at, message_id FROM activities WHERE kind = 'email_in' "
                        "AND customer_key IS NOT NULL ORDER BY id").fetchall()
    out = []
    for n, (key, at, mid) in enumerate(rows):
        if rng.random() >= 0.6:
            continue
        from datetime import datetime

        when = datetime.fromisoformat(at.replace("Z", "+00:00")) + timedelta(minutes=rng.randrange(60, 30 * 60))
        if when >= NOW:
            continue
        details = json.dumps({"to": [key], "answers": [mid], "folder": "Sent", "uid": n + 1})
        out.append((key, "reply_out", iso(when), "回复：您好", "好的，报价单见附件。", f"<team{n}@example.com>", mid,
                    None, None, "maildir:Sent", details, iso(when), None))
    conn.executemany("INSERT INTO activities (customer_key, kind, occurred_at, subject, body, message_id, "
                     "in_reply_to, campaign, step, source, details, logged_at, digest) "
                     "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", out)
    total = conn.execute("SELECT COUNT(*) FROM activities").fetchone()[0]
    extra = max(total - activities, 0)
    conn.execute("DELETE FROM activities WHERE id IN (SELECT id FROM activities WHERE kind = 'field_changed' "
                 "ORDER BY id DESC LIMIT ?)", (extra,))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def settle(ws: Path, passes: int = 8) -> list[int]:
    """Real send passes at the benchmark's "now" until one sends nothing: the log a worker leaves.

    Each pass plans, records its planning and hands its sends to the file
    outbox; the outbox is deleted afterwards (the log keeps what was sent).
    """
    sent = []
    for _ in range(passes):
        res = must(run_rusage(cli(ws / "config.toml", "--json", "--now", iso(NOW), "send"), ws), "a settling send pass")
        stats = [s.get("stats", {}) for s in json.loads(res["out"])["stages"] if s.get("job") == "send"]
        sent.append(int(stats[0].get("sent", 0)) if stats else 0)
        if sent[-1] == 0:
            break
    shutil.rmtree(ws / "var" / "outbox", ignore_errors=True)
    return sent


def drop_clicks(db: Path, activities: int) -> None:
    """Make room for what the settling passes logged by removing as many clicks (the newest).

    Clicks, because nothing timed here reads them: the stage changes (the
    pipeline's history, ``--since``'s moves) stay as build 1 had them.
    """
    conn = sqlite3.connect(db, isolation_level=None)
    extra = conn.execute("SELECT COUNT(*) FROM activities").fetchone()[0] - activities
    if extra > 0:
        conn.execute("DELETE FROM activities WHERE id IN (SELECT id FROM activities WHERE kind = 'click' "
                     "ORDER BY id DESC LIMIT ?)", (extra,))
    conn.close()


def build(target: Path, customers: int, activities: int) -> Rec:
    tmp = target.with_name(target.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    write_workspace(tmp, customers)
    must(run_rusage(cli(tmp / "config.toml", "--now", iso(START), "sync"), tmp), "the first sync")
    db = tmp / "var" / "crm.sqlite"
    must(run_rusage([sys.executable, bench_pages.__file__, "--fill-log", str(db), str(activities)]), "filling the log")
    settled = settle(tmp)
    drop_clicks(db, activities)
    add_team_replies(db, activities)
    conn = sqlite3.connect(db)
    counts = dict(conn.execute("SELECT kind, COUNT(*) FROM activities GROUP BY kind").fetchall())
    counts["(all activities)"] = sum(counts.values())
    counts["(customers)"] = conn.execute("SELECT COUNT(*) FROM customers").fetchone()[0]
    counts["(sends)"] = conn.execute("SELECT COUNT(*) FROM sends").fetchone()[0]
    conn.close()
    meta = {"build_version": BUILD_VERSION, "customers": customers, "activities": activities, "owners": OWNERS,
            "counts": counts, "settling_passes_sent": settled, "seconds": round(time.perf_counter() - t0, 1),
            "db_mb": round(db.stat().st_size / 1e6)}
    (tmp / "bench-build.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return meta


def cached(cache: Path, customers: int, activities: int, rebuild: bool) -> tuple[Path, Rec, bool]:
    base = cache / f"pipeline-{customers}x{activities}-settled"
    try:
        meta: Rec | None = json.loads((base / "bench-build.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if meta is not None and meta.get("build_version") == BUILD_VERSION and not rebuild:
        return base, meta, False
    return base, build(base, customers, activities), True


# ---------------------------------------------------------------- timing


def floor(ws: Any) -> Any:
    """The same store reads as the use case, into DataFrames, one group-by: customers and median days per cell.

    The reads are the report's own (``read_rows``): every customer with
    their contact times in one query (``store.sales_rows``), the month's
    customer mail with our first email after each, the replies naming mail,
    the stage moves of the 30 days. The report reads no more rows than these.
    """
    import pandas as pd

    from crm_automation.app.access import reading
    from crm_automation.app.pipeline import read_rows

    with reading(ws) as store:
        rows = read_rows(ws, store, NOW, NOW - timedelta(days=30))
    people = rows.customers.merge(rows.contact, on="key", how="left")
    since = people["stage_changed"].fillna(people["first_seen"])
    people["days"] = (pd.Timestamp(NOW) - since).dt.total_seconds() / 86400
    return people.groupby(["stage", "owner"], dropna=False).agg(customers=("key", "size"), days=("days", "median"))


def digest_floor(ws: Any) -> Any:
    """The digests' own store reads, into one DataFrame, one group-by: each owner's stale-candidate count.

    The reads one day's digests make for all owners (every customer with
    their times; the events since the previous workday's digest moment;
    the month's customer mail after our latest email; the follow-ups sent
    since local midnight); not the planner's reads for the follow-ups due
    later today, which are the send pass's own questions, not rows.
    """
    import pandas as pd

    from crm_automation.app.access import reading

    roles = ws.mapping.roles
    with reading(ws) as store:
        rows = store.sales_rows(roles.name, roles.stage, roles.owner)
        store.digest_events(NOW - timedelta(days=1), NOW, roles.owner)
        store.inbound_after_outbound(NOW - timedelta(days=30))
        store.follow_ups_sent_since(NOW - timedelta(hours=10))
    people = pd.DataFrame(rows, columns=["key", "name", "stage", "owner", "first_seen", "last_in", "sent",
                                         "replied", "changed"])
    return people.groupby("owner", dropna=False).agg(customers=("key", "size"), last_in=("last_in", "max"))


def timed(f: Callable[[], object], runs: int) -> Rec:
    wall, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        f()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"s": statistics.median(wall), "min": min(wall), "max": max(wall), "cpu": statistics.median(cpu)}


def digests(ws: Any) -> Any:
    """One day's digests for every owner: what the send pass reads when it plans the day (rendering not timed)."""
    from crm_automation.app.access import reading
    from crm_automation.app.digest import digests_in

    with reading(ws) as store:
        return digests_in(ws, store, NOW)


def measure(work: Path, runs: int) -> Rec:
    from crm_automation.app.pipeline import pipeline
    from crm_automation.store.repo import Store
    from crm_automation.workspace import Workspace

    ws = Workspace.load(work / "config.toml")
    Store.open(ws.cfg.database).close()  # this tree's migrations (untimed)
    result = pipeline(ws, NOW, since=NOW - timedelta(days=30))
    data = result.to_json()
    cases = {
        "floor: same reads + one pandas group-by": lambda: floor(ws),
        "report pipeline": lambda: pipeline(ws, NOW),
        "report pipeline --since (30 days)": lambda: pipeline(ws, NOW, since=NOW - timedelta(days=30)),
        "digests floor: their reads + one pandas group-by": lambda: digest_floor(ws),
        "one day's digests, 50 owners": lambda: digests(ws),
    }
    book = digests(ws)
    sections = ("waiting", "replies", "stale", "bounces", "unsubscribes", "due", "assigned")
    out: Rec = {"cases": {}, "cells": len(data["cells"]), "owners": len(data["owners"]),
                "customers": sum(c["customers"] for c in data["cells"]),
                "stale": sum(c["stale"] for c in data["cells"]), "moves": sum(m["count"] for m in data["moves"]),
                "digests": len(book.digests),
                "digest_items": {k: sum(len(getattr(d, k)) + d.more.get(k, 0) for d in book.digests.values())
                                 for k in sections}}
    times: dict[str, list[Rec]] = {k: [] for k in cases}
    for _ in range(runs):  # the cases take turns, so a busy spell of the machine slows them alike
        for name, f in cases.items():
            times[name].append(timed(f, 1))
    for name, rs in times.items():
        out["cases"][name] = {"s": statistics.median(r["s"] for r in rs), "min": min(r["s"] for r in rs),
                              "max": max(r["s"] for r in rs), "cpu": statistics.median(r["cpu"] for r in rs)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--activities", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=7, help="calls of each case (default 7)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "crm-bench-pipeline")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    args.cache.mkdir(parents=True, exist_ok=True)
    src, meta, fresh = cached(args.cache, args.customers, args.activities, args.rebuild)
    log(f"{'built' if fresh else 'cached build'} {src}: {meta['counts']} ({meta['db_mb']} MB; {meta['seconds']} s)")
    work = src.with_name(src.name + ".run")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work)
    load = os.getloadavg()[0]
    try:
        result = measure(work, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_average"] = [load, os.getloadavg()[0]]
    if args.json:
        print(json.dumps({"build": meta, "runs": args.runs, **result}, ensure_ascii=False, indent=2))
        return 0
    cases = result["cases"]
    print(f"\n{args.customers:,} customers, {meta['counts']['(all activities)']:,} activities, {OWNERS} owners; "
          f"{result['cells']} stage x owner cells, {result['stale']:,} stale, {result['moves']:,} moves in 30 days; "
          f"load average {load:.1f} -> {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    print(f"digests: {result['digests']} owners; items (all owners, before the 50-a-section cut): "
          f"{result['digest_items']}")
    print(f"{args.runs} runs each, seconds: median wall (min-max), CPU; x floor: the report's cases against the "
          f"first floor, the digests against theirs")
    print("| case | wall | CPU | x floor (wall) | x floor (CPU) | under 2 s (wall / CPU) |")
    print("|---|---|---|---|---|---|")
    base = cases["floor: same reads + one pandas group-by"]
    for name, c in cases.items():
        if name.startswith("digests floor"):
            base = c
        print(f"| {name} | {c['s']:.2f} ({c['min']:.2f}-{c['max']:.2f}) | {c['cpu']:.2f} | {c['s'] / base['s']:.2f} | "
              f"{c['cpu'] / base['cpu']:.2f} | {'yes' if c['s'] < TARGET_S else 'NO'} / "
              f"{'yes' if c['cpu'] < TARGET_S else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
