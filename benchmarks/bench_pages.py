"""What each page of the dashboard costs server-side on a big log (issue #19, "Performance").

Target (issue #19): on a log of 100,000 customers and 1,000,000 activities,
the dashboard, the attention list and a customer search each under 300 ms
server-side (p95). Every page renders one result of the application layer
(``crm_automation/app/``), so this times those functions, in a process of
their own, each call opening the log read-only as a page does:

  dashboard          ``reports.dashboard``: the funnel per campaign and step as
                     ``report --json`` shows it, and the charts' per-day
                     series (30 days); on a tree before it, ``report`` plus
                     ``daily``. No cache anywhere: every figure is a cold
                     read of the log by a fresh connection
  funnel, health, daily, report   the dashboard's parts on their own
  attention          uncertain and failed sends, quarantine, recent replies
  search: ...        ``customers.search`` by a Chinese name, a company word,
                     an address fragment, a key, a word nobody has
  timeline           one customer's activities (a different customer per run)
  suppressions       the suppression list (a page of it, where the tree pages)

How the log is built (once, cached under ``--cache``; bench_pass.py's way and
helpers): a CSV sheet of N customers (Chinese and English names, companies,
addresses at QQ Mail, 163.com, Outlook, company domains) recorded by the
product's own ``sync``; then, with plain SQL in one transaction, a realistic
history seeded for repeatability over 90 days: five campaigns and nine steps
whose sends are ``sent``/``queued``/``uncertain``/``failed``/``skipped`` with
an ``email_out`` activity per sent message, replies, enquiries from unknown
senders, auto-replies, hard/soft/delayed bounces, unsubscribes, link clicks
(kind ``click``, logged against the send's campaign and step, details naming
the send), ``send_failed``, ``field_changed`` filling the rest up to the
activity count; quarantined messages, the suppression list and email status
that follow from them, and the worker's stage runs every few minutes.

Each tree (``--trees before,after``; default: the one Python imports) gets a
work copy of the same build; a child process with that tree first on
PYTHONPATH opens it once for writing (untimed: it applies the tree's
migrations, e.g. new indexes) and then times every use case ``--runs`` times,
the use cases taking turns. A use case the tree does not have (``daily`` on a
tree before it) is shown as "-". Figures are milliseconds in the child: wall
clock (p50, p95, max), in which the machine's other load counts, and the
call's own CPU time (p50), with the load average before and after.

    python benchmarks/bench_pages.py                              # 100k x 1M, the tree Python imports
    python benchmarks/bench_pages.py --trees /path/to/main,. --runs 40 --json
    python benchmarks/bench_pages.py --customers 10000 --activities 100000   # a quick look

Not part of the test suite. Writes nothing outside --cache (default: a folder
under the system temp dir, kept between runs) and the work copies (deleted
unless --keep).
"""

from __future__ import annotations

import argparse
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pass import cli, iso, must, require, run, run_rusage, tree_info, write_files

Rec = dict[str, Any]
BUILD_VERSION = 1  # bump when the generated data changes: cached builds of another version are rebuilt
TARGET_MS = 300.0
NOW = datetime(2026, 6, 30, 2, 0, tzinfo=UTC)  # the benchmark's "now": 10:00 in Asia/Shanghai
START = NOW - timedelta(days=90)  # the first sync; the history spans these 90 days
STAGES = ["潜在客户", "意向", "报价", "成交", "流失"]

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢"
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉萍红娥玲芬燕彬鹏辉建国志文斌宁浩"
EN_FIRST = ["John", "Mary", "David", "Linda", "Michael", "Susan", "James", "Karen", "Robert", "Lisa", "Peter", "Anna"]
EN_LAST = ["Smith", "Brown", "Wilson", "Taylor", "Clark", "Walker", "Young", "King", "Wright", "Green", "Baker"]
CITIES = ["上海", "北京", "深圳", "广州", "杭州", "苏州", "南京", "成都", "武汉", "天津", "宁波", "厦门"]
WORDS = ["恒达", "华信", "宏远", "金桥", "瑞丰", "鼎盛", "永泰", "博创", "新华", "安居", "东方", "联合", "天成", "汇通"]
TRADES = ["贸易", "科技", "电子", "机械", "物流", "食品", "建材", "纺织", "医疗器械", "软件"]
EN_COMPANIES = ["Acme Trading Ltd", "Blue River Logistics", "Northwind Foods", "Pacific Tech Co", "Globex Supply"]
FREE_DOMAINS = ["qq.com", "163.com", "126.com", "foxmail.com", "outlook.com", "gmail.com", "sina.com"]

# Campaign -> its steps' ids (the step's template), as campaigns.toml below defines them.
CAMPAIGN_STEPS = {
    "welcome": ["welcome", "welcome_followup", "welcome_last_call"],
    "quote": ["quote_followup", "quote_reminder"],
    "spring": ["spring_offer", "spring_reminder"],
    "summer": ["summer_offer"],
    "reactivate": ["reactivate"],
}
CAMPAIGNS = """\
[[campaign]]
id       = "welcome"
template = "welcome"
trigger  = "new"
where    = { stage = ["潜在客户", "意向"] }
follow_up = [
  { after_days = 3, template = "welcome_followup" },
  { after_days = 7, template = "welcome_last_call" },
]

[[campaign]]
id       = "quote"
template = "quote_followup"
trigger  = "change"
field    = "stage"
to       = "报价"
follow_up = [{ after_days = 5, template = "quote_reminder" }]

[[campaign]]
id       = "spring"
template = "spring_offer"
trigger  = "at"
at       = "2026-04-30T10:00"
follow_up = [{ after_days = 7, template = "spring_reminder" }]

[[campaign]]
id       = "summer"
template = "summer_offer"
trigger  = "at"
at       = "2026-06-10T10:00"

[[campaign]]
id       = "reactivate"
template = "reactivate"
trigger  = "change"
field    = "stage"
to       = "流失"
"""
TEMPLATE = "Subject: {{ customer.name }}，您好\n\n{{ customer.name }}您好：\n\n感谢关注{{ customer.company }}。\n\n销售部\n"
REPLY = "您好，\n\n收到，谢谢。我们下周会讨论一下订单的数量，再和您联系。\n"
BODY_OUT = "您好：\n\n感谢一直以来的信任与支持！\n老客户可享订单九折优惠。\n\n销售部\n"


# ---------------------------------------------------------------- the sheet


def person(i: int, rng: random.Random) -> tuple[str, str, str]:
    """(name, company, address) of customer ``i``: mostly Chinese, one in ten English."""
    if i % 10 == 7:
        first, last = rng.choice(EN_FIRST), rng.choice(EN_LAST)
        name, company = f"{first} {last}", rng.choice(EN_COMPANIES)
        email = f"{first.lower()}.{last.lower()}{i}@{company.split()[0].lower()}.example.com"
    else:
        name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
        company = f"{rng.choice(CITIES)}{rng.choice(WORDS)}{rng.choice(TRADES)}有限公司"
        email = f"c{i:07d}@{rng.choice(FREE_DOMAINS)}" if i % 3 else f"sales{i}@corp{i % 4000}.example.cn"
    return name, company, email


def write_sheet(path: Path, n: int) -> None:
    import csv

    rng = random.Random(19)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["邮箱", "客户名称", "公司", "阶段", "负责人邮箱"])
        for i in range(n):
            name, company, email = person(i, rng)
            w.writerow([email, name, company, STAGES[i % 5], f"owner{i % 20}@example.com"])


def write_workspace(ws: Path, customers: int) -> None:
    write_files(ws)  # bench_pass's config, mapping and templates
    (ws / "mappings" / "campaigns.toml").write_text(CAMPAIGNS, encoding="utf-8")
    for steps in CAMPAIGN_STEPS.values():
        for t in steps:
            (ws / "email_templates" / f"{t}.txt").write_text(TEMPLATE, encoding="utf-8")
    write_sheet(ws / "customers.csv", customers)


# ---------------------------------------------------------------- the history


def _t(rng: random.Random, lo: datetime, hi: datetime) -> datetime:
    span = max(int((hi - lo).total_seconds()), 1)
    return lo + timedelta(seconds=rng.randrange(span))


def fill_log(db: Path, activities: int) -> None:
    """The history over the synced customers, in plain SQL (one transaction); ``activities`` in all."""
    rng = random.Random(1919)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    require(conn, "sends", {"campaign", "step", "step_id", "customer_key", "status", "message_id", "queued_at",
                            "sent_at", "email", "attempts", "next_attempt_at", "error", "kind"})
    require(conn, "activities", {"customer_key", "kind", "occurred_at", "subject", "body", "message_id",
                                 "in_reply_to", "campaign", "step", "source", "details", "logged_at", "digest"})
    keys = [k for (k,) in conn.execute("SELECT key FROM customers ORDER BY rowid")]
    already = conn.execute("SELECT COUNT(*) FROM activities").fetchone()[0]  # the sync's customer_added
    conn.execute("BEGIN")
    sends: list[tuple[Any, ...]] = []
    acts: list[tuple[Any, ...]] = []
    suppress: dict[str, tuple[str, str, str]] = {}
    status_of: dict[str, str] = {}
    j = json.JSONEncoder(ensure_ascii=False).encode

    def act(key: str | None, kind: str, at: datetime, *, subject: str | None = None, body: str | None = None,
            mid: str | None = None, irt: str | None = None, campaign: str | None = None, step: int | None = None,
            source: str = "maildir:INBOX", details: dict[str, Any] | None = None, digest: str | None = None) -> None:
        acts.append((key, kind, iso(at), subject, body, mid, irt, campaign, step, source, j(details or {}), iso(at),
                     digest))

    def inbound(key: str, kind: str, at: datetime, n: int, **kw: Any) -> None:
        mid = f"<in{n}-{kind}@mail.example.net>"
        act(key, kind, at, mid=mid, digest=f"{n:016x}", **kw)

    sid = 0
    n_in = 0
    starts = {"spring": datetime(2026, 4, 30, 2, 0, tzinfo=UTC), "summer": datetime(2026, 6, 10, 2, 0, tzinfo=UTC)}
    for i, key in enumerate(keys):
        plan: list[tuple[str, int, datetime]] = []
        if rng.random() < 0.6:  # welcome: 3 steps, 3 and 7 days apart
            t0 = _t(rng, START, NOW - timedelta(days=1))
            for step, after, p in ((0, 0, 1.0), (1, 3, 0.75), (2, 7, 0.5)):
                if rng.random() < p and t0 + timedelta(days=after) < NOW:
                    plan.append(("welcome", step, t0 + timedelta(days=after, minutes=rng.randrange(600))))
        if rng.random() < 0.2:
            t0 = _t(rng, START, NOW - timedelta(days=1))
            plan.append(("quote", 0, t0))
            if rng.random() < 0.5 and t0 + timedelta(days=5) < NOW:
                plan.append(("quote", 1, t0 + timedelta(days=5)))
        plan.append(("spring", 0, starts["spring"] + timedelta(seconds=i // 5)))
        if rng.random() < 0.5:
            plan.append(("spring", 1, starts["spring"] + timedelta(days=7, seconds=i // 5)))
        if rng.random() < 0.8:
            plan.append(("summer", 0, starts["summer"] + timedelta(seconds=i // 4)))
        if rng.random() < 0.15:
            plan.append(("reactivate", 0, _t(rng, START, NOW - timedelta(hours=2))))
        for campaign, step, at in plan:
            sid += 1
            step_id = CAMPAIGN_STEPS[campaign][step]
            r = rng.random()
            status = ("queued" if r < 0.015 else "uncertain" if r < 0.018 else "failed" if r < 0.028
                      else "skipped" if r < 0.045 else "sent")
            mid = f"<b{sid}@bench.example.com>" if status in ("sent", "uncertain") else None
            err = ("550 5.1.1 user unknown" if status == "failed" else
                   "connection lost after DATA" if status == "uncertain" else
                   "suppressed" if status == "skipped" else None)
            sends.append((sid, campaign, step, step_id, key, status, mid, iso(at - timedelta(minutes=5)),
                          iso(at) if status == "sent" else None, key, 1 if status != "queued" else 0, None, err,
                          "campaign_step"))
            if status == "failed":
                act(key, "send_failed", at, campaign=campaign, step=step, source="smtp",
                    details={"error": err, "permanent": True})
            if status != "sent":
                continue
            act(key, "email_out", at, subject="您好", body=BODY_OUT, mid=mid, campaign=campaign, step=step,
                source="smtp")
            after = at + timedelta(minutes=rng.randrange(5, 3 * 24 * 60))
            r = rng.random()
            if r < 0.25 and after < NOW:  # clicked, once or twice
                for c in range(rng.choice((1, 1, 2))):
                    act(key, "click", after + timedelta(minutes=c), campaign=campaign, step=step, source="web",
                        details={"send_id": sid, "link": c, "url": "https://example.com/offer"})
            r = rng.random()
            if after >= NOW:
                continue
            n_in += 1
            if r < 0.13:
                inbound(key, "email_in", after, n_in, subject="回复：您好", body=REPLY, irt=mid,
                        details={"from": key, "evidence": "a reply", "matched_by": "from address"})
            elif r < 0.20:
                inbound(key, "auto_reply", after, n_in, subject="自动回复：我正在休假", body="我正在休假。",
                        irt=mid, details={"from": key, "evidence": "Auto-Submitted: auto-replied"})
            elif r < 0.24:
                perm = rng.choice(("hard", "hard", "hard", "soft", "soft", "delayed"))
                inbound(key, "bounce", after, n_in, subject="Undelivered Mail Returned to Sender",
                        body="delivery failed", campaign=campaign, step=step,
                        details={"from": "MAILER-DAEMON@mx.example.net", "recipient": key, "permanence": perm,
                                 "status": "5.1.1" if perm == "hard" else "4.2.2", "original_message_id": mid})
                if perm == "hard":
                    suppress.setdefault(key, ("bounced", iso(after), f"bounce {campaign}/{step}"))
                    status_of[key] = "bounced"
            elif r < 0.255:
                inbound(key, "unsubscribe", after, n_in, subject="退订", body="退订", irt=mid,
                        details={"from": key, "evidence": "退订", "matched_by": "from address"})
                suppress.setdefault(key, ("unsubscribed", iso(after), "email"))
                status_of.setdefault(key, "unsubscribed")
        if i % 100 == 42:
            suppress.setdefault(key, ("manual", iso(_t(rng, START, NOW)), "cli"))
    # Enquiries from unknown senders (no customer), about 1 in 200 activities.
    for n in range(len(acts) // 200):
        n_in += 1
        inbound(None, "email_in", _t(rng, START, NOW), n_in, subject="询价：产品目录", body="请发一份产品目录和报价。",
                details={"from": f"buyer{n}@newco{n % 300}.example.cn", "evidence": "new sender"})
    # field_changed fills the rest (the sheet is edited all the time).
    rest = max(activities - already - len(acts), 0)
    for n in range(rest):
        key = keys[rng.randrange(len(keys))]
        act(key, "field_changed", _t(rng, START, NOW), source="customers.csv",
            details={"field": "stage", "old": STAGES[n % 5], "new": STAGES[(n + 1) % 5], "row": 2 + n % len(keys)})
    acts.sort(key=lambda a: a[11])  # logged in time order, as the worker logs them
    conn.executemany("INSERT INTO sends (id, campaign, step, step_id, customer_key, status, message_id, queued_at, "
                     "sent_at, email, attempts, next_attempt_at, error, kind) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                     sends)
    conn.executemany("INSERT INTO activities (customer_key, kind, occurred_at, subject, body, message_id, "
                     "in_reply_to, campaign, step, source, details, logged_at, digest) "
                     "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", acts)
    conn.executemany("INSERT INTO suppressions (email, reason, at, source) VALUES (?,?,?,?)",
                     [(k, *v) for k, v in suppress.items()])
    conn.executemany("UPDATE customers SET email_status = ? WHERE key = ?", [(s, k) for k, s in status_of.items()])
    raw = ("From: someone@example.net\r\nSubject: =?broken?Q?x?=\r\n\r\n" + "x" * 2000).encode()
    conn.executemany("INSERT INTO quarantine (source, received_at, error, raw, digest, from_addr, customer_key, size) "
                     "VALUES (?,?,?,?,?,?,?,?)",
                     [("maildir:INBOX", iso(_t(rng, START, NOW)), "unreadable MIME structure", raw, f"q{n:08d}",
                       keys[n * 37 % len(keys)] if n % 2 else None, keys[n * 37 % len(keys)] if n % 2 else None,
                       len(raw)) for n in range(3000)])
    runs = []
    t = START
    while t < NOW:  # every stage every 5 minutes for 90 days; one failed fetch in 50
        for job in ("sync", "fetch", "send", "writeback"):
            ok = not (job == "fetch" and rng.random() < 0.02)
            runs.append((job, iso(t), iso(t + timedelta(seconds=3)), int(ok), json.dumps({"n": 1}),
                         None if ok else "IMAP login failed"))
        t += timedelta(minutes=5)
    conn.executemany("INSERT INTO runs (job, started_at, finished_at, ok, stats, error) VALUES (?,?,?,?,?,?)", runs)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def build(target: Path, customers: int, activities: int, tree: str | None) -> Rec:
    tmp = target.with_name(target.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    write_workspace(tmp, customers)
    must(run_rusage(cli(tmp / "config.toml", "--now", iso(START), "sync"), tmp, tree), "the first sync")
    must(run_rusage([sys.executable, __file__, "--fill-log", str(tmp / "var" / "crm.sqlite"), str(activities)]),
         "filling the log")
    conn = sqlite3.connect(tmp / "var" / "crm.sqlite")
    counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
              for t in ("customers", "activities", "sends", "suppressions", "quarantine", "runs")}
    migrations = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY name")]
    conn.close()
    meta = {"build_version": BUILD_VERSION, "customers": customers, "activities": activities, "counts": counts,
            "migrations": migrations, "seconds": round(time.perf_counter() - t0, 1),
            "db_mb": round((tmp / "var" / "crm.sqlite").stat().st_size / 1e6)}
    (tmp / "bench-build.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return meta


def cached(cache: Path, customers: int, activities: int, rebuild: bool, tree: str | None) -> tuple[Path, Rec, bool]:
    base = cache / f"pages-{customers}x{activities}"
    try:
        meta: Rec | None = json.loads((base / "bench-build.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if meta is not None and meta.get("build_version") == BUILD_VERSION and not rebuild:
        return base, meta, False
    return base, build(base, customers, activities, tree), True


# ---------------------------------------------------------------- timing, in a child with the tree on sys.path


def measure_child(work: Path, runs: int) -> Rec:
    """Time the use cases in this process (the tree under test is the crm_automation it imports)."""
    from crm_automation.app import customers, reports, suppressions
    from crm_automation.store.repo import Store
    from crm_automation.workspace import Workspace

    ws = Workspace.load(work / "config.toml")
    t = time.perf_counter()
    Store.open(ws.cfg.database).close()  # applies this tree's migrations to the copy (untimed: once per upgrade)
    migrate_s = time.perf_counter() - t
    conn = sqlite3.connect(ws.cfg.database)
    keys = [k for (k,) in conn.execute("SELECT key FROM customers ORDER BY key")]
    clickers = {k for (k,) in conn.execute("SELECT DISTINCT customer_key FROM activities WHERE kind = 'click'")}
    conn.close()
    from crm_automation.models import Kind

    knows_click = "click" in {k.value for k in Kind}
    # A tree that does not know kind `click` cannot read a timeline holding one: its timelines are of customers
    # without clicks (said in the output).
    sample = [k for k in keys if knows_click or k not in clickers]
    rng = random.Random(7)
    has_daily = hasattr(reports, "daily")

    def dashboard() -> object:
        if hasattr(reports, "dashboard"):  # the page's one use case: the funnel and the 30 days' charts
            return reports.dashboard(ws, NOW)
        r = reports.report(ws, NOW)  # a tree before it: what its page read (report), and the charts' days
        return (r, reports.daily(ws, NOW)) if has_daily else r

    def supp() -> object:
        if "limit" in suppressions.suppressions.__code__.co_varnames:  # a tree that pages the list
            return suppressions.suppressions(ws, limit=50)
        return suppressions.suppressions(ws)

    cases: dict[str, Callable[[], object] | None] = {
        "dashboard": dashboard,
        "report": lambda: reports.report(ws, NOW),
        "funnel": lambda: reports.funnel(ws),
        "health": lambda: reports.health(ws, NOW),
        "daily": (lambda: reports.daily(ws, NOW)) if has_daily else None,
        "attention": lambda: reports.attention(ws, NOW),
        "search: name 王伟": lambda: customers.search(ws, "王伟"),
        "search: name 李": lambda: customers.search(ws, "李"),
        "search: English name": lambda: customers.search(ws, "walker"),
        "search: company 贸易": lambda: customers.search(ws, "贸易"),
        "search: company 恒达电子": lambda: customers.search(ws, "恒达电子"),
        "search: address @163.com": lambda: customers.search(ws, "@163.com"),
        "search: address c00123": lambda: customers.search(ws, "c00123"),
        "search: a key": lambda: customers.search(ws, keys[len(keys) // 2]),
        "search: nobody": lambda: customers.search(ws, "无此人zzz"),
        "timeline": lambda: reports.timeline(ws, sample[rng.randrange(len(sample))]),
        "suppressions": supp,
    }
    times: dict[str, list[float]] = {k: [] for k, f in cases.items() if f is not None}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    sizes: dict[str, Any] = {}
    for _ in range(runs):
        for name, f in cases.items():
            if f is None:
                continue
            t, c = time.perf_counter(), time.process_time()
            result = f()
            times[name].append((time.perf_counter() - t) * 1000)
            cpu[name].append((time.process_time() - c) * 1000)
            sizes[name] = _size(result)
    out: Rec = {"migrate_s": round(migrate_s, 2), "knows_click": knows_click, "cases": {}}
    for name in cases:
        if name not in times:
            out["cases"][name] = None
            continue
        ms = sorted(times[name])
        out["cases"][name] = {"p50": statistics.median(ms), "p95": ms[min(len(ms) - 1, int(0.95 * len(ms) + 0.5) - 1)],
                              "max": ms[-1], "cpu_p50": statistics.median(cpu[name]), "size": sizes[name]}
    return out


def _size(result: object) -> str:
    """What a result held (rows found), to show the work was real."""
    if isinstance(result, tuple):
        return " + ".join(_size(r) for r in result)
    data = result.to_json() if hasattr(result, "to_json") else None
    if isinstance(data, list):
        return f"{len(data)} rows"
    if isinstance(data, dict):
        if isinstance(data.get("campaigns"), list) and isinstance(data.get("daily"), dict):
            return f"{len(data['campaigns'])} campaigns + {len(data['daily']['days'])} days"
        for k in ("campaigns", "customers", "activities", "suppressions", "days"):
            if k in data and isinstance(data[k], list):
                return f"{len(data[k])} {k}" + (", more" if data.get("more") else "")
        if "sends" in data:
            return f"{len(data['sends'])} sends, {len(data['replies']['items'])} replies"
        if "stages" in data:
            return f"{len(data['stages'])} stages"
    return ""


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--activities", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=30, help="calls of each use case (default 30)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "crm-bench-pages")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep each tree's work copy")
    ap.add_argument("--trees", type=lambda v: [str(Path(x).resolve()) for x in v.split(",") if x.strip()],
                    help="folders holding a crm_automation/ package to compare, e.g. /path/to/main,.")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--fill-log", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fill_log:
        fill_log(Path(args.fill_log[0]), int(args.fill_log[1]))
        return 0
    if args.measure:
        print(json.dumps(measure_child(Path(args.measure[0]), int(args.measure[1]))))
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    args.cache.mkdir(parents=True, exist_ok=True)
    trees = [tree_info(args.cache, t) for t in (args.trees or [None])]
    if len({t["label"] for t in trees}) < len(trees):
        for i, t in enumerate(trees):
            t["label"] = f"{i + 1}:{t['label']}"
    builder = min(trees, key=lambda t: len(t["migrations"] or []))
    src, meta, fresh = cached(args.cache, args.customers, args.activities, args.rebuild, builder["pythonpath"])
    log(f"{'built' if fresh else 'cached build'} {src}: {meta['counts']} ({meta['db_mb']} MB; {meta['seconds']} s)")
    results: dict[str, Rec] = {}
    load = os.getloadavg()
    for i, t in enumerate(trees):
        work = src.with_name(f"{src.name}.run{i}")
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        try:
            r = must(run([sys.executable, __file__, "--measure", str(work), str(args.runs)], args.cache,
                         t["pythonpath"]), f"{t['label']}: measuring")
            results[t["label"]] = json.loads(r["out"])
        finally:
            if args.keep:
                log(f"  kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
        log(f"{t['label']}: migrations applied in {results[t['label']]['migrate_s']} s")
    if args.json:
        print(json.dumps({"build": meta, "runs": args.runs, "trees": trees, "results": results,
                          "load_average": [load[0], os.getloadavg()[0]], "cpus": os.cpu_count()},
                         ensure_ascii=False, indent=2))
        return 0
    labels = list(results)
    print(f"\nload average before: {load[0]:.1f}, after: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    print(f"{args.customers:,} customers, {meta['counts']['activities']:,} activities, "
          f"{meta['counts']['sends']:,} sends; {args.runs} calls each, wall ms p50 / p95 / max (CPU ms p50: what "
          "the call itself cost; wall time adds what other processes took of the machine meanwhile)")
    print("| use case | " + " | ".join(labels) + " | rows |")
    print("|---|" + "---|" * len(labels) + "---|")
    for case in results[labels[0]]["cases"]:
        cells, rows = [], ""
        for k in labels:
            c = results[k]["cases"].get(case)
            cells.append("-" if c is None else f"{c['p50']:.0f} / {c['p95']:.0f} / {c['max']:.0f} "
                         f"({c.get('cpu_p50', 0):.0f})" + ("" if c["p95"] <= TARGET_MS else " over"))
            rows = c["size"] if c else rows
        print(f"| {case} | " + " | ".join(cells) + f" | {rows} |")
    for k in labels:
        if not results[k]["knows_click"]:
            print(f"({k} has no activity kind `click`: its timelines are of customers without clicks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
