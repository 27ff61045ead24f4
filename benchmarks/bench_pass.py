"""What a pass costs when little or nothing is due, as the customer list grows (issue #23, "Benchmark").

Builds workspaces of N customers (a CSV sheet, config, mappings, campaigns and
templates like the sample workspace) whose log holds A activities per customer
plus one sent email each for an ``at`` broadcast that already went out, so
nothing is due. Then times whole processes (``python -m crm_automation``, the
median of ``--runs`` runs; peak memory is the child's own ``ru_maxrss`` from
``os.wait4``):

  --help             the floor: Python's start and the CLI's imports
  nothing due        ``send --dry-run`` on the settled workspace
  100 due            ``send --dry-run --now +4d`` after 100 new customers were
                     sent their first ``welcome`` email by a real ``send``:
                     their follow-up (``after_days = 3``) has come due
  1 new              ``send --dry-run`` after one row was added to the sheet
                     and synced (its ``welcome`` email is due)
  report --json      the funnel and the sends needing attention
  sync, unchanged    ``sync`` of the untouched sheet (its fingerprint)

How the log is built (fast, and valid for whichever tree is on PYTHONPATH):
the sheet is written as CSV and recorded by the product's own ``sync`` (so the
store's migrations, row hashes and the sheet's fingerprint are its own); then
the broadcast's ``sends`` rows, their ``email_out`` activities and the other
activities (replies, auto-replies, field changes, delay warnings) are inserted
with plain SQL, ``INSERT ... SELECT`` over ``customers``, naming only columns
that schema 4 (main 3d7f142) already has. That raw build is cached under
``--cache`` (keyed by customers x activities), and each run works on a copy:
first a real ``sync`` and ``send`` with the tree under test (untimed; it
migrates the copy and records what its planner keeps between passes), then the
timings. A tree whose migrations do not extend the cached log's gets its own
cache entry.

Targets (issue #23), at 100,000 customers / 1,000,000 activities: nothing due
<= 0.3 s wall and <= 100 MB peak; 100 due <= 0.5 s; nothing-due time at
1,000,000 customers <= 2x that at 10,000.

    python benchmarks/bench_pass.py                          # 10k and 100k customers, 1, 2, 10 activities
    python benchmarks/bench_pass.py --sizes 10000,100000 --activities 1,10 --json
    python benchmarks/bench_pass.py --sizes 1000000 --activities 1 --cache ~/bench-cache
    python benchmarks/bench_pass.py --trees /path/to/main,.     # before and after in one run, taking turns

``--trees`` compares checkouts in one run: each gets its own work copy of the
same cached build (made by the tree with the fewest migrations, so every tree
can open it), and every timed command runs the trees in turn, run by run, so a
busy spell on a shared machine slows them alike.

Not part of the test suite. Writes nothing outside --cache (default: a folder
under the system temp dir, kept between runs) and the work copy (deleted unless
--keep); byte-compiles the package under test once, as ``pip install`` does.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

Rec = dict[str, Any]  # a JSON-ready record of figures
BUILD_VERSION = 1  # bump when the generated data changes: cached builds of another version are rebuilt
STAGES = ["潜在客户", "意向", "报价", "成交", "流失"]
SCHEMA4_MIGRATIONS = ["0001_initial", "0002_sheet_state", "0003_hardening", "0004_step_identity"]

CONFIG = """\
[workspace]
timezone  = "Asia/Shanghai"
database  = "var/crm.sqlite"
mappings  = "mappings"
templates = "email_templates"
language  = "zh-CN"

[sheet]
source    = "csv"
path      = "customers.csv"
writeback = false

[mailbox]
source = "maildir"
path   = "inbox"

[outbound]
transport = "outbox"
outbox    = "var/outbox"
from      = "销售部 <sales@example.com>"
reply_to  = "sales@example.com"
max_per_minute = 0
max_per_day    = 0
"""

MAPPING = """\
key = "email"

[fields]
email   = { column = "邮箱", type = "email", required = true }
name    = { column = "客户名称", required = true }
company = { column = "公司" }
stage   = { column = "阶段", type = "choice", choices = ["潜在客户", "意向", "报价", "成交", "流失"] }
owner   = { column = "负责人邮箱", type = "email" }

[writeback]
last_sent    = "最近发送"
last_reply   = "最近回复"
email_status = "邮件状态"
"""

# As the sample's campaigns.toml, except that the year-end broadcast goes to everyone (one sent email each) and
# welcome has no include_existing (the customers already in the sheet are not its audience).
CAMPAIGNS = """\
[[campaign]]
id       = "welcome"
template = "welcome"
trigger  = "new"
where    = { stage = ["潜在客户", "意向"] }
follow_up = [
  { after_days = 3, template = "welcome_followup" },
]
stop_on  = ["reply", "bounce", "unsubscribe"]

[[campaign]]
id       = "quote"
template = "quote_followup"
trigger  = "change"
field    = "stage"
to       = "报价"

[[campaign]]
id       = "year-end"
template = "year_end_offer"
trigger  = "at"
at       = "2026-11-20T10:00"
"""

TEMPLATES = {
    "welcome": "Subject: {{ customer.name }}，欢迎！\n\n{{ customer.name }}您好：\n\n感谢关注{{ customer.company }}。\n\n销售部\n",
    "welcome_followup": "Subject: {{ customer.name }}，还有什么可以帮您？\n\n{{ customer.name }}您好：\n\n"
                        "上次的资料看过了吗？\n\n销售部\n",
    "quote_followup": "Subject: {{ customer.name }}，您的报价\n\n{{ customer.name }}您好：\n\n报价已附上。\n\n销售部\n",
    "year_end_offer": "Subject: {{ customer.name }}，年终老客户专享优惠\n\n{{ customer.name }}您好：\n\n"
                      "感谢{{ customer.company }}一直以来的信任与支持！\n年终老客户可享订单九折优惠。\n\n销售部\n",
}
BROADCAST = ("year-end", "year_end_offer")  # campaign, step key (the step's template: it has no id)
BROADCAST_SUBJECT = "年终老客户专享优惠"
BROADCAST_BODY = "您好：\n\n感谢一直以来的信任与支持！\n年终老客户可享订单九折优惠，12 月 31 日前有效。\n\n销售部\n"
REPLY_BODY = ("您好，\n\n收到，谢谢。我们下周会讨论一下订单的数量，再和您联系。\n\n> 年终老客户可享订单九折优惠，"
              "12 月 31 日前有效。\n")
# The kind of each activity after customer_added (the sync writes that one), for A = 2 .. 10.
EXTRA_KINDS = ["email_in", "field_changed", "auto_reply", "email_in", "field_changed", "email_in", "bounce",
               "email_in", "auto_reply"]

# Figures with a target, and the target (issue #23).
NOTHING_DUE_S, NOTHING_DUE_MB, DUE100_S, GROWTH = 0.3, 100.0, 0.5, 2.0
TARGET_CUSTOMERS = 100_000


# ---------------------------------------------------------------- processes


def env(tree: str | None = None) -> dict[str, str]:
    """The children's environment; ``tree`` (a folder holding ``crm_automation/``) goes first on PYTHONPATH."""
    e = dict(os.environ)
    e.pop("CRM_AUTOMATION_CONFIG", None)
    if tree is not None:
        e["PYTHONPATH"] = os.pathsep.join(p for p in (tree, e.get("PYTHONPATH")) if p)
    return e


def run(cmd: list[str], cwd: Path | None = None, tree: str | None = None) -> Rec:
    """Run a helper process (not timed): its exit code and output."""
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env(tree), check=False)
    return {"rc": r.returncode, "out": r.stdout, "err": r.stderr}


def run_rusage(cmd: list[str], cwd: Path | None = None, tree: str | None = None) -> Rec:
    """Run one whole process: wall time, its own peak RSS (MB, reaped with ``os.wait4``), exit code, output."""
    t = time.perf_counter()
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, cwd=cwd, env=env(tree))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read().decode("utf-8", "replace"), fe.read().decode("utf-8", "replace")
    return {"wall": wall, "rss_mb": usage.ru_maxrss / 1024, "rc": proc.returncode, "out": out, "err": err}


def cli(cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "crm_automation", "--config", str(cfg), "-q", *args]


def must(res: Rec, what: str) -> Rec:
    if res["rc"] != 0:
        tail = "\n".join((res["err"] or res["out"]).strip().splitlines()[-8:])
        raise SystemExit(f"{what} failed (exit {res['rc']}):\n{tail}")
    return res


def timed(cmd: list[str], runs: int, cwd: Path, check: Callable[[str], str] | None = None,
          tree: str | None = None) -> Rec:
    """``runs`` runs of one command: median wall, the highest peak RSS, and what ``check`` says of the output."""
    return timed_many({"": (cmd, cwd, tree)}, runs, check)[""]


def timed_many(cmds: dict[str, tuple[list[str], Path, str | None]], runs: int,
               check: Callable[[str], str] | None = None) -> dict[str, Rec]:
    """As :func:`timed` for one command per tree, the trees taking turns (a busy spell slows them alike)."""
    results: dict[str, list[Rec]] = {k: [] for k in cmds}
    for _ in range(runs):
        for k, (cmd, cwd, tree) in cmds.items():
            results[k].append(must(run_rusage(cmd, cwd, tree), f"{k or 'the tree'}: {' '.join(cmd[2:])}"))
    return {k: {"s": statistics.median(r["wall"] for r in rs), "mb": max(r["rss_mb"] for r in rs),
                "runs": [round(r["wall"], 3) for r in rs], "note": check(rs[-1]["out"]) if check else None}
            for k, rs in results.items()}


def would_send(out: str) -> int | None:
    """How many messages a ``--json`` dry run would send (its stats, else its queued items; None: not said)."""
    stage = json.loads(out)["stages"][-1]
    if "would_send" in stage.get("stats", {}):
        return int(stage["stats"]["would_send"])
    details = stage.get("details")
    return sum(d.get("status") == "queued" for d in details) if isinstance(details, list) else None


def expect_due(n: int) -> Callable[[str], str]:
    def check(out: str) -> str:
        got = would_send(out)
        if got is None:
            return "the dry run's --json output does not say how many are due: not checked"
        if got != n:
            raise SystemExit(f"the dry run would send {got} message(s); this workspace is built so that {n} are due")
        return f"would send {got}"
    return check


def tree_info(cwd: Path, tree: str | None = None) -> Rec:
    """Which crm_automation the children import (PYTHONPATH or the installed package), and its migrations.

    Run from ``cwd`` (the cache), as the timed commands run from their workspace: ``python -m``/``-c`` put the
    current folder first on sys.path, so a checkout's own package there would win over PYTHONPATH.
    """
    code = ("import json, crm_automation, os\n"
            "try:\n from crm_automation.store.migrations import MIGRATIONS\n m = [n for n, _ in MIGRATIONS]\n"
            "except Exception:\n m = None\n"
            "print(json.dumps({'package': os.path.dirname(crm_automation.__file__), 'migrations': m}))")
    r = must(run([sys.executable, "-c", code], cwd, tree), f"importing crm_automation from {tree or 'sys.path'}")
    info: Rec = json.loads(r["out"])
    info["pythonpath"] = tree
    # the last commit that changed the package (a branch that only adds benchmarks names its base)
    head = subprocess.run(["git", "-C", info["package"], "log", "-1", "--format=%h", "--", "."], capture_output=True,
                          text=True, check=False)
    dirty = subprocess.run(["git", "-C", info["package"], "status", "--porcelain", "--", "."], capture_output=True,
                           text=True, check=False)
    info["commit"] = (head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")) if head.returncode == 0 \
        else None
    info["label"] = info["commit"] or info["package"]
    return info


# ---------------------------------------------------------------- building a workspace


def write_files(ws: Path) -> None:
    (ws / "mappings").mkdir(parents=True, exist_ok=True)
    (ws / "email_templates").mkdir(exist_ok=True)
    for sub in ("cur", "new", "tmp"):
        (ws / "inbox" / sub).mkdir(parents=True, exist_ok=True)
    (ws / "config.toml").write_text(CONFIG, encoding="utf-8")
    (ws / "mappings" / "customers.toml").write_text(MAPPING, encoding="utf-8")
    (ws / "mappings" / "campaigns.toml").write_text(CAMPAIGNS, encoding="utf-8")
    for name, text in TEMPLATES.items():
        (ws / "email_templates" / f"{name}.txt").write_text(text, encoding="utf-8")


HEADER = ["邮箱", "客户名称", "公司", "阶段", "负责人邮箱"]


def sheet_row(i: int, stage: str | None = None) -> list[str]:
    return [f"c{i:07d}@example.net", f"客户{i}", f"公司{i % 5000}", stage or STAGES[i % 5], f"owner{i % 20}@example.com"]


def write_sheet(path: Path, n: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(sheet_row(i) for i in range(n))


def append_rows(path: Path, start: int, n: int) -> None:
    """New customers at the end of the sheet, in a stage welcome goes to."""
    with path.open("a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(sheet_row(i, "潜在客户") for i in range(start, start + n))


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def require(conn: sqlite3.Connection, table: str, needed: set[str]) -> None:
    missing = needed - columns(conn, table)
    if missing:
        raise SystemExit(f"the log's table {table} has no column(s) {', '.join(sorted(missing))}: this benchmark "
                         "fills the columns of schema 4 (main 3d7f142); adapt bench_pass.py to the new schema")


def fill_log(db: Path, activities: int) -> None:
    """The broadcast's sends and email_out rows, and activities 2..A of each customer, in plain SQL.

    Only columns that schema 4 has are named: a later schema's new columns
    keep their defaults here, and the tree under test fills what it needs
    when it migrates or at its first real pass (the "settle" step).
    """
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")
        require(conn, "customers", {"key", "row", "data"})
        require(conn, "sends", {"campaign", "step", "step_id", "customer_key", "status", "message_id", "queued_at",
                                "sent_at", "email", "attempts"})
        require(conn, "activities", {"customer_key", "kind", "occurred_at", "subject", "body", "message_id",
                                     "in_reply_to", "campaign", "step", "source", "details", "logged_at", "digest"})
        t = datetime.now(UTC).replace(microsecond=0)  # after the sync: the broadcast went to everyone synced
        campaign, step_id = BROADCAST
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO sends (campaign, step, step_id, customer_key, status, message_id, queued_at, sent_at, email, "
            "attempts) SELECT ?, 0, ?, key, 'sent', '<ye-' || rowid || '@bench.example.com>', ?, ?, "
            "json_extract(data, '$.email'), 1 FROM customers ORDER BY key",
            (campaign, step_id, iso(t), iso(t)))
        conn.execute(
            "INSERT INTO activities (customer_key, kind, occurred_at, subject, body, message_id, campaign, step, "
            "source, details, logged_at) SELECT key, 'email_out', ?, json_extract(data, '$.name') || '，' || ?, ?, "
            "'<ye-' || rowid || '@bench.example.com>', ?, 0, 'outbox', '{}', ? FROM customers ORDER BY key",
            (iso(t), BROADCAST_SUBJECT, BROADCAST_BODY, campaign, iso(t)))
        conn.execute("COMMIT")
        for j, kind in enumerate(EXTRA_KINDS[:max(activities - 1, 0)], start=1):
            at = iso(t + timedelta(minutes=j))
            conn.execute("BEGIN")
            conn.execute(_EXTRA_SQL[kind], {"at": at, "j": j, "body": REPLY_BODY, "campaign": campaign})
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


_INBOUND = ("INSERT INTO activities (customer_key, kind, occurred_at, subject, body, message_id, in_reply_to, campaign, "
            "step, source, details, logged_at, digest) SELECT key, '{kind}', :at, {subject}, {body}, "
            "'<in-' || rowid || '-' || :j || '@mail.example.net>', {in_reply_to}, {campaign}, {step}, 'maildir:INBOX', "
            "{details}, :at, printf('%016x%04x', rowid, :j) FROM customers ORDER BY key")
_FROM = "json_extract(data, '$.email')"
_EXTRA_SQL = {
    "email_in": _INBOUND.format(
        kind="email_in", subject="'回复：' || json_extract(data, '$.name') || '，年终老客户专享优惠'", body=":body",
        in_reply_to="'<ye-' || rowid || '@bench.example.com>'", campaign="NULL", step="NULL",
        details=f"json_object('from', {_FROM}, 'to', json_array('sales@example.com'), 'evidence', 'a reply', "
                f"'matched_by', 'from address', 'recipients', json_array(), 'permanent', json('false'), "
                f"'uid', rowid * 16 + :j)"),
    "auto_reply": _INBOUND.format(
        kind="auto_reply", subject="'自动回复：我正在休假'", body="'我正在休假，1 月 3 日回来。'",
        in_reply_to="'<ye-' || rowid || '@bench.example.com>'", campaign="NULL", step="NULL",
        details=f"json_object('from', {_FROM}, 'to', json_array('sales@example.com'), 'evidence', "
                f"'Auto-Submitted: auto-replied', 'matched_by', 'from address', 'recipients', json_array(), "
                f"'permanent', json('false'), 'uid', rowid * 16 + :j)"),
    "bounce": _INBOUND.format(
        kind="bounce", subject="'Delivery Status Notification (Delay)'", body="'delivery delayed'",
        in_reply_to="NULL", campaign=":campaign", step="0",
        details=f"json_object('from', 'MAILER-DAEMON@mx.example.net', 'to', json_array('sales@example.com'), "
                f"'evidence', 'DSN Action: delayed', 'matched_by', 'failed recipient ' || {_FROM}, 'recipient', "
                f"{_FROM}, 'permanence', 'delayed', 'status', '4.4.7', 'permanent', json('false'), "
                f"'recipients', json_array({_FROM}), 'original_message_id', '<ye-' || rowid || '@bench.example.com>', "
                f"'uid', rowid * 16 + :j)"),
    "field_changed": (
        "INSERT INTO activities (customer_key, kind, occurred_at, source, details, logged_at) "
        "SELECT key, 'field_changed', :at, 'customers.csv', json_object('field', 'company', 'old', "
        "json_extract(data, '$.company') || ' (旧 ' || :j || ')', 'new', json_extract(data, '$.company'), 'row', row), "
        ":at FROM customers ORDER BY key"),
}


def build(target: Path, customers: int, activities: int, tree: str | None = None) -> Rec:
    """Build one workspace into ``target`` (through a temp folder beside it, renamed when complete)."""
    tmp = target.with_name(target.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    write_files(tmp)
    t0 = time.perf_counter()
    write_sheet(tmp / "customers.csv", customers)
    t_sheet = time.perf_counter() - t0
    sync = must(run_rusage(cli(tmp / "config.toml", "sync"), tmp, tree), "the first sync")
    # In a child: SQLite's page cache would grow this process, and a child's ru_maxrss starts at its parent's
    # size when it was forked (Linux keeps the high-water mark across exec), which would inflate every figure.
    fill = must(run_rusage([sys.executable, __file__, "--fill-log", str(tmp / "var" / "crm.sqlite"),
                            str(activities)]), "filling the log")
    t_fill = fill["wall"]
    conn = sqlite3.connect(tmp / "var" / "crm.sqlite")
    try:
        migrations = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY name")]
        n_act = conn.execute("SELECT COUNT(*) FROM activities").fetchone()[0]
    finally:
        conn.close()
    meta = {"build_version": BUILD_VERSION, "customers": customers, "activities_per_customer": activities,
            "activities_total": n_act, "migrations": migrations, "built_at": iso(datetime.now(UTC)),
            "seconds": {"sheet": round(t_sheet, 1), "sync": round(sync["wall"], 1), "fill": round(t_fill, 1),
                        "total": round(time.perf_counter() - t0, 1)},
            "sync_peak_mb": round(sync["rss_mb"]), "db_mb": round((tmp / "var" / "crm.sqlite").stat().st_size / 1e6)}
    (tmp / "bench-build.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return meta


def cached(cache: Path, customers: int, activities: int, tree_migrations: list[str] | None,
           rebuild: bool, tree: str | None = None) -> tuple[Path, Rec, bool]:
    """The cached raw build for (customers, activities), built now if missing, stale or newer than the tree."""
    base = cache / f"{customers}x{activities}"
    meta = _meta(base)
    if meta is not None and tree_migrations is not None and not set(meta["migrations"]) <= set(tree_migrations):
        # built by a newer tree (its migrations are unknown to this one): a separate entry for this tree
        base = cache / f"{customers}x{activities}-schema{len(tree_migrations)}"
        meta = _meta(base)
    if meta is not None and not rebuild:
        return base, meta, False
    return base, build(base, customers, activities, tree), True


def _meta(path: Path) -> Rec | None:
    try:
        meta: Rec = json.loads((path / "bench-build.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if meta.get("build_version") == BUILD_VERSION else None


# ---------------------------------------------------------------- measuring one workspace


def measure(src: Path, meta: Rec, runs: int, keep: bool, log: Callable[[str], None], trees: list[Rec]) -> list[Rec]:
    """Every scenario on one cached build: a work copy per tree, settled by that tree; the trees take turns."""
    customers = meta["customers"]
    works = {t["label"]: src.with_name(f"{src.name}.run{i}") for i, t in enumerate(trees)}
    pp = {t["label"]: t["pythonpath"] for t in trees}
    outs: dict[str, Rec] = {t["label"]: {"tree": t["label"], "customers": customers,
                                         "activities_per_customer": meta["activities_per_customer"],
                                         "activities_total": meta["activities_total"]} for t in trees}
    name = "" if len(trees) == 1 else "{} "

    def each(*args: str) -> dict[str, tuple[list[str], Path, str | None]]:
        return {k: (cli(w / "config.toml", *args), w, pp[k]) for k, w in works.items()}

    def step(what: str, *args: str) -> dict[str, Rec]:
        return {k: must(run_rusage(cmd, cwd, tree), f"{k}: {what}") for k, (cmd, cwd, tree) in each(*args).items()}

    def scenario(key: str, label: str, m: dict[str, Rec]) -> None:
        for k, r in m.items():
            outs[k][key] = r
            log(f"  {name.format(k)}{label}: {fmt(r)}")

    try:
        for k, work in works.items():
            shutil.rmtree(work, ignore_errors=True)
            t = time.perf_counter()
            shutil.copytree(src, work)
            copy_s = time.perf_counter() - t
            # Settle with the tree under test: it migrates the copy and records what its planner keeps between
            # passes.
            t = time.perf_counter()
            must(run_rusage(cli(work / "config.toml", "sync"), work, pp[k]), f"{k}: settling: sync")
            settle = must(run_rusage(cli(work / "config.toml", "send"), work, pp[k]), f"{k}: settling: send")
            outs[k]["settle"] = {"copy_s": round(copy_s, 1), "s": round(time.perf_counter() - t, 1),
                                 "send_s": round(settle["wall"], 2), "send_mb": round(settle["rss_mb"])}
            log(f"  {name.format(k)}settled in {outs[k]['settle']['s']:.1f} s (copy {copy_s:.1f} s; the real send "
                f"pass {settle['wall']:.2f} s, {settle['rss_mb']:.0f} MB)")

        scenario("nothing_due", "nothing due", timed_many(each("--json", "send", "--dry-run"), runs, expect_due(0)))
        scenario("report", "report --json", timed_many(each("--json", "report"), runs))
        scenario("sync_unchanged", "sync, unchanged", timed_many(each("sync"), runs))

        # 100 follow-ups due: 100 new customers get their welcome email now (a real pass, through the outbox);
        # their follow-up is due three days later, which the dry run's --now reaches.
        for w in works.values():
            append_rows(w / "customers.csv", customers, 100)
        prep = step("sync of 100 added rows", "sync")
        before = {k: len(list((w / "var" / "outbox").glob("*.eml"))) for k, w in works.items()}
        sent = step("sending the 100 welcome emails", "send")
        for k, w in works.items():
            n = len(list((w / "var" / "outbox").glob("*.eml"))) - before[k]  # the outbox: one file a message
            if n != 100:
                raise SystemExit(f"{k}: the send pass that starts 100 welcome sequences sent {n} message(s), not 100")
            outs[k]["sync_100_added"] = {"s": round(prep[k]["wall"], 3), "mb": round(prep[k]["rss_mb"])}
            outs[k]["send_100"] = {"s": round(sent[k]["wall"], 3), "mb": round(sent[k]["rss_mb"])}
        scenario("due_100", "100 due",
                 timed_many(each("--json", "--now", "+4d", "send", "--dry-run"), runs, expect_due(100)))

        # One new customer: the sheet gains a row, a sync records it, the dry run finds its welcome email due.
        for w in works.values():
            append_rows(w / "customers.csv", customers + 100, 1)
        prep = step("sync of 1 added row", "sync")
        for k in works:
            outs[k]["sync_1_added"] = {"s": round(prep[k]["wall"], 3), "mb": round(prep[k]["rss_mb"])}
        scenario("new_1", "1 new customer", timed_many(each("--json", "send", "--dry-run"), runs, expect_due(1)))
    finally:
        for w in works.values():
            if keep:
                log(f"  kept the work copy: {w}")
            else:
                shutil.rmtree(w, ignore_errors=True)
    return list(outs.values())


def fmt(m: Rec) -> str:
    note = f"; {m['note']}" if m.get("note") else ""
    return f"{m['s']:.3f} s (runs {', '.join(f'{r:.3f}' for r in m['runs'])}), peak {m['mb']:.0f} MB{note}"


# ---------------------------------------------------------------- the table


def mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def verdicts(rows: list[Rec]) -> list[Rec]:
    """The issue's targets, checked where the measured sizes allow (per tree)."""
    out: list[Rec] = []

    def add(r: Rec, target: str, value: float, unit: str, ok: bool) -> None:
        out.append({"tree": r["tree"], "target": target, "value": value, "unit": unit, "ok": ok})

    for r in rows:
        if r["customers"] != TARGET_CUSTOMERS:
            continue
        where = f"{r['customers']:,} customers x {r['activities_per_customer']} activities"
        nd, d100 = r["nothing_due"], r["due_100"]
        add(r, f"nothing due <= {NOTHING_DUE_S} s ({where})", round(nd["s"], 3), "s", nd["s"] <= NOTHING_DUE_S)
        add(r, f"nothing due <= {NOTHING_DUE_MB:.0f} MB peak ({where})", round(nd["mb"]), "MB",
            nd["mb"] <= NOTHING_DUE_MB)
        add(r, f"100 due <= {DUE100_S} s ({where})", round(d100["s"], 3), "s", d100["s"] <= DUE100_S)
    groups: dict[tuple[str, int], dict[int, Rec]] = {}
    for r in rows:
        groups.setdefault((r["tree"], r["activities_per_customer"]), {})[r["customers"]] = r
    for (_, acts), sizes in groups.items():
        small = min(sizes)
        for big in sorted(sizes):
            if big == small:
                continue
            ratio = sizes[big]["nothing_due"]["s"] / sizes[small]["nothing_due"]["s"]
            stated = small == 10_000 and big == 1_000_000
            add(sizes[big], f"nothing-due growth {small:,} -> {big:,} customers <= {GROWTH:.0f}x ({acts} activities)"
                f"{'' if stated else ' (the issue states it 10,000 -> 1,000,000)'}", round(ratio, 2), "x",
                ratio <= GROWTH)
    return out


def table(rows: list[Rec], helps: dict[str, Rec]) -> str:
    many = len(helps) > 1
    head = [*(["tree"] if many else []), "customers", "acts/cust", "activities", "nothing due", "peak", "100 due",
            "peak", "1 new", "peak", "report --json", "sync, unchanged", "--help"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        nd, d1, n1, rep, sy = r["nothing_due"], r["due_100"], r["new_1"], r["report"], r["sync_unchanged"]
        lines.append("| " + " | ".join([
            *([r["tree"]] if many else []),
            f"{r['customers']:,}", str(r["activities_per_customer"]), f"{r['activities_total']:,}",
            f"{nd['s']:.2f} s", f"{nd['mb']:.0f} MB", f"{d1['s']:.2f} s", f"{d1['mb']:.0f} MB",
            f"{n1['s']:.2f} s", f"{n1['mb']:.0f} MB", f"{rep['s']:.2f} s", f"{sy['s']:.2f} s",
            f"{helps[r['tree']]['s']:.2f} s"]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=ints, default=[10_000, 100_000],
                    help="customers, comma-separated (default 10000,100000; 1000000 only when asked: slow to build)")
    ap.add_argument("--activities", type=ints, default=[1, 2, 10],
                    help="activities per customer besides the broadcast's email, 1..10 (default 1,2,10)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each timed command; the median is shown (default 3)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "crm-bench-pass",
                    help="where built workspaces are kept between runs (default: %(default)s)")
    ap.add_argument("--rebuild", action="store_true", help="build the workspaces again even if cached")
    ap.add_argument("--keep", action="store_true", help="keep each work copy (beside its cached build)")
    ap.add_argument("--no-compile", action="store_true", help="do not byte-compile the package under test first")
    ap.add_argument("--trees", type=lambda v: [str(Path(x).resolve()) for x in v.split(",") if x.strip()],
                    help="folders holding a crm_automation/ package to compare (e.g. ../before,.), each put first "
                         "on PYTHONPATH; each scenario runs them in turn (default: the one Python imports)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON (progress goes to stderr)")
    ap.add_argument("--fill-log", nargs=2, metavar=("DB", "A"), help=argparse.SUPPRESS)  # the build's child
    args = ap.parse_args()
    if args.fill_log:
        fill_log(Path(args.fill_log[0]), int(args.fill_log[1]))
        return 0
    if any(not 1 <= a <= len(EXTRA_KINDS) + 1 for a in args.activities):
        ap.error(f"--activities: each between 1 and {len(EXTRA_KINDS) + 1}")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    args.cache.mkdir(parents=True, exist_ok=True)
    trees = [tree_info(args.cache, t) for t in (args.trees or [None])]
    if len({t["label"] for t in trees}) < len(trees):
        for i, t in enumerate(trees):
            t["label"] = f"{i + 1}:{t['label']}"
    for t in trees:
        log(f"{t['label']}: crm_automation from {t['package']}, {len(t['migrations'] or [])} migrations")
        if not args.no_compile:
            # As `pip install` does for users; this machine may set PYTHONDONTWRITEBYTECODE, which would otherwise
            # recompile every module in every timed run (bench_sync.py does the same).
            r = run([sys.executable, "-m", "compileall", "-q", t["package"]])
            if r["rc"] != 0:
                log(f"  (could not byte-compile {t['package']}: the timings include compiling)")
    # The raw builds are made by the tree with the fewest migrations, so that every tree can open (and migrate) them.
    builder = min(trees, key=lambda t: len(t["migrations"] or []))
    helps = timed_many({t["label"]: ([sys.executable, "-m", "crm_automation", "--help"], args.cache, t["pythonpath"])
                        for t in trees}, args.runs)
    for k, h in helps.items():
        log(f"{k} --help: {fmt(h)}")
    rows: list[Rec] = []
    builds: list[Rec] = []
    for size in args.sizes:
        for acts in args.activities:
            log(f"{size:,} customers x {acts} activities:")
            src, meta, fresh = cached(args.cache, size, acts, builder["migrations"], args.rebuild,
                                      builder["pythonpath"])
            log(f"  {'built' if fresh else 'cached build'} {src} ({meta['activities_total']:,} activities, "
                f"{meta['db_mb']} MB log; built in {meta['seconds']['total']:.0f} s: sync {meta['seconds']['sync']:.0f} s, "
                f"{meta['sync_peak_mb']} MB, inserts {meta['seconds']['fill']:.0f} s)")
            builds.append({"path": str(src), "fresh": fresh, **meta})
            rows += measure(src, meta, args.runs, args.keep, log, trees)
    checks = verdicts(rows)
    # Every child's ru_maxrss is at least this process's size when it was forked (see build()): keep it small.
    own_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        print(json.dumps({"trees": trees, "runs": args.runs, "help": helps, "rows": rows, "targets": checks,
                          "builds": builds, "bench_process_peak_mb": round(own_mb)}, ensure_ascii=False, indent=2))
        return 0
    print()
    print(f"{', '.join(t['label'] for t in trees)}: whole processes, median of {args.runs} runs"
          f"{', the trees taking turns' if len(trees) > 1 else ''}; peak = the child's ru_maxrss, highest of the "
          f"runs (a floor of {own_mb:.0f} MB: this script's own size)")
    print(table(rows, helps))
    print()
    for c in checks:
        who = f"[{c['tree']}] " if len(trees) > 1 else ""
        print(f"  {mark(c['ok'])}  {who}{c['target']}: {c['value']}{'' if c['unit'] == 'x' else ' '}{c['unit']}")
    if not checks:
        print(f"  (targets are stated at {TARGET_CUSTOMERS:,} customers and for growth between sizes: none measured)")
    return 0

if __name__ == "__main__":
    sys.exit(main())
