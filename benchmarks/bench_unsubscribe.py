"""One-click unsubscribes against a real `serve` while the worker sends (issue #19 "Performance").

Side by side in one run, rounds taking turns, each on a fresh copy of one prepared workspace:

  baseline    `crm-automation send` mails campaign "second" to N customers over loopback SMTP
              (a counting aiosmtpd in its own process); `serve` runs on the same log, idle.
  with POSTs  the same send, while 200 concurrent clients (one asyncio process, one connection each,
              X-Forwarded-For 10.x.y.z from loopback so each is its own client for the rate limit) POST
              RFC 8058's `List-Unsubscribe=One-Click` to /u/{token} of campaign "first"'s sends - each
              token twice (a provider retrying) - at random moments spread over the send.

The unsubscribing customers are not in campaign "second"'s segment, so both rounds send the same N.

Measured: POST latency (client side, p50/p95/p99/max; target p99 < 50 ms); every POST answered 200;
after each round the log holds exactly one `unsubscribe` activity and one suppression per token
(nothing lost, nothing doubled); the send rate (messages per second between the SMTP server's first
and last message, so process start-up is left out) with and without the POSTs (target: < 10% drop).

    python benchmarks/bench_unsubscribe.py                     # 5,000 sends, 200 clients x 2 tokens x 2
    python benchmarks/bench_unsubscribe.py --sends 2000 --rounds 2 --burst

--burst also measures 200 clients POSTing at the same instant (no send running): the worst queue.

Not part of the test suite. Network: 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FROM = "销售部 <sales@example.com>"


# -- the counting SMTP server (child process): counts messages, notes the first and last -----------------


def _smtp(conn, counter, first, last) -> None:
    from aiosmtpd.smtp import SMTP

    class Counting:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            now = time.time()
            if counter.value == 0:
                first.value = now
            counter.value += 1
            last.value = now
            return "250 OK"

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(
        lambda: SMTP(Counting(), hostname="bench.local", ident="bench", loop=loop), "127.0.0.1", 0))
    conn.send(server.sockets[0].getsockname()[1])
    loop.run_forever()


class SmtpServer:
    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.counter = ctx.Value("q", 0, lock=False)
        self.first = ctx.Value("d", 0.0, lock=False)
        self.last = ctx.Value("d", 0.0, lock=False)
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_smtp, args=(child, self.counter, self.first, self.last), daemon=True)
        self.proc.start()
        if not parent.poll(30):
            raise SystemExit("the counting SMTP server did not start")
        self.port = parent.recv()

    def reset(self) -> None:
        self.counter.value, self.first.value, self.last.value = 0, 0.0, 0.0

    def rate(self) -> float:
        n, span = self.counter.value, self.last.value - self.first.value
        return (n - 1) / span if n > 1 and span > 0 else float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(5)


# -- the workspace -----------------------------------------------------------------------------------------


def prepare(work: Path, port: int, n_send: int, n_unsub: int, env: dict[str, str]) -> tuple[Path, list[str]]:
    """A workspace whose "first" campaign went to n_unsub customers (their tokens returned); "second" is due."""
    ws = work / "ws"
    (ws / "mappings").mkdir(parents=True)
    (ws / "email_templates").mkdir()
    for sub in ("cur", "new", "tmp"):
        (ws / "inbox" / sub).mkdir(parents=True)
    with (ws / "customers.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["email", "name", "stage"])
        w.writerows([f"old{i:05d}@example.net", f"老客户{i}", "old"] for i in range(n_unsub))
        w.writerows([f"new{i:05d}@example.net", f"客户{i}", "new"] for i in range(n_send))
    (ws / "mappings" / "customers.toml").write_text(
        'key = "email"\n\n[fields]\nemail = { column = "email", type = "email", required = true }\n'
        'name = { column = "name", required = true }\nstage = { column = "stage" }\n', encoding="utf-8")
    (ws / "mappings" / "campaigns.toml").write_text(
        '[[campaign]]\nid = "first"\ntemplate = "bench"\ntrigger = "at"\nat = "2026-01-01T10:00"\n'
        'where = { stage = "old" }\n\n'
        '[[campaign]]\nid = "second"\ntemplate = "bench"\ntrigger = "at"\nat = "2026-01-02T10:00"\n'
        'where = { stage = "new" }\n', encoding="utf-8")
    (ws / "email_templates" / "bench.txt").write_text(
        "Subject: {{ customer.name }}，年终老客户专享优惠\n\n{{ customer.name }}您好：\n\n"
        "年终老客户可享订单九折优惠。\n\n退订：{{ unsubscribe }}\n", encoding="utf-8")
    (ws / "config.toml").write_text(
        '[workspace]\ntimezone = "Asia/Shanghai"\ndatabase = "var/crm.sqlite"\n\n'
        '[sheet]\nsource = "csv"\npath = "customers.csv"\nwriteback = false\n\n'
        '[mailbox]\nsource = "maildir"\npath = "inbox"\n\n'
        f'[outbound]\ntransport = "smtp"\nfrom = "{FROM}"\nhost = "127.0.0.1"\nport = {port}\n'
        'security = "none"\nmax_per_minute = 0\nmax_per_day = 0\n\n'
        '[serve]\npublic_url = "https://crm.example.com"\n', encoding="utf-8")
    cfg = ws / "config.toml"
    for args in (["sync"], ["send", "--now", "2026-01-01T12:00"]):
        subprocess.run([sys.executable, "-m", "crm_automation", "-q", "--config", str(cfg), *args], check=True,
                       env=env, stdout=subprocess.DEVNULL)
    conn = sqlite3.connect(ws / "var" / "crm.sqlite")
    rows = conn.execute("SELECT message_id FROM sends WHERE campaign = 'first' AND status = 'sent'").fetchall()
    conn.close()
    if len(rows) != n_unsub:
        raise SystemExit(f"expected {n_unsub} sends of 'first', found {len(rows)}")
    return ws, [m.strip("<>").partition("@")[0] for (m,) in rows]


def counts(ws: Path) -> tuple[int, int, int, int]:
    """Unsubscribe activities, distinct tokens among them, suppressions, sends of 'second' marked sent."""
    conn = sqlite3.connect(ws / "var" / "crm.sqlite")
    try:
        acts = conn.execute("SELECT COUNT(*), COUNT(DISTINCT customer_key) FROM activities "
                            "WHERE kind = 'unsubscribe'").fetchone()
        sups = conn.execute("SELECT COUNT(*) FROM suppressions WHERE reason = 'unsubscribed'").fetchone()[0]
        sent = conn.execute("SELECT COUNT(*) FROM sends WHERE campaign = 'second' AND status = 'sent'").fetchone()[0]
    finally:
        conn.close()
    return acts[0], acts[1], sups, sent


# -- serve (a real `crm-automation serve` process) -----------------------------------------------------


def start_serve(cfg: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-m", "crm_automation", "serve", "--config", str(cfg), "--port", "0"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**env, "CRM_SERVE_SECRET": "bench-secret-0123456789abcdef"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        if m := re.search(r"on (http://127\.0\.0\.1:\d+)", line):
            return p, m.group(1)
        if not line and p.poll() is not None:
            break
    p.kill()
    raise SystemExit(f"serve did not start: {p.communicate()[1]}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_serve(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()


# -- the clients (child process) ----------------------------------------------------------------------------


async def _clients(url: str, plan: list[list[str]], spread: float, seed: int) -> list[tuple[float, int, float]]:
    """Each client: its POSTs at random moments within ``spread`` seconds, each on a new connection.

    Plain asyncio streams and a prebuilt HTTP/1.1 request rather than an HTTP library: on a 2-core machine
    the load generator must not take the CPU the server and the worker are measured on (httpx's async client
    costs about 1 ms of CPU a request, ten times this).
    """
    host, port = url.removeprefix("http://").split(":")
    rnd = random.Random(seed)
    out: list[tuple[float, int, float]] = []
    body = b"List-Unsubscribe=One-Click"
    t0 = time.perf_counter()

    async def one(i: int, tokens: list[str]) -> None:
        moments = sorted(rnd.uniform(0, spread) for _ in tokens)
        forwarded = f"10.{i // 250}.{i % 250}.{1 + i % 200}"
        for at, token in zip(moments, tokens, strict=True):
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            request = (f"POST /u/{token} HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: {forwarded}\r\n"
                       "Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            start = time.perf_counter()  # a new connection for each POST, as a mail provider's would be
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await reader.readexactly(length)
            finally:
                writer.close()
            out.append(((time.perf_counter() - start) * 1000, status, time.time()))

    await asyncio.gather(*(one(i, tokens) for i, tokens in enumerate(plan)))
    return out


def _client_proc(url, plan, spread, seed, go, conn) -> None:
    try:  # uvloop (installed with serve): the load generator takes less of the CPU the others are measured on
        import uvloop
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    go.wait()
    conn.send(run(_clients(url, plan, spread, seed)))


def start_clients(url: str, plan: list[list[str]], spread: float, seed: int):
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_client_proc, args=(url, plan, spread, seed, go, child), daemon=True)
    proc.start()
    time.sleep(0.5)  # let it start before the clock does
    return proc, go, parent


# -- rounds -------------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def one_round(template: Path, work: Path, smtp: SmtpServer, env: dict[str, str], n_send: int,
              plan: list[list[str]] | None, spread: float, seed: int) -> dict:
    ws = work / f"round-{seed}-{'posts' if plan else 'base'}"
    shutil.copytree(template, ws)
    cfg = ws / "config.toml"
    serve, url = start_serve(cfg, env)
    cpu0 = cpu_seconds(serve.pid)
    try:
        clients = start_clients(url, plan, spread, seed) if plan else None
        smtp.reset()
        t0 = time.time()
        if clients:
            clients[1].set()
        subprocess.run([sys.executable, "-m", "crm_automation", "-q", "--config", str(cfg), "send", "--now",
                        "2026-01-02T12:00"], check=True, env=env, stdout=subprocess.DEVNULL)
        t1 = time.time()
        posts: list[tuple[float, int, float]] = []
        if clients:
            posts = clients[2].recv()
            clients[0].join(30)
        serve_cpu = cpu_seconds(serve.pid) - cpu0
    finally:
        stop_serve(serve)
    rate = smtp.rate()
    acts, distinct, sups, sent = counts(ws)
    during = sum(1 for _, _, at in posts if t0 <= at <= t1)
    shutil.rmtree(ws)
    return {"rate": rate, "send_seconds": t1 - t0, "sent": sent, "smtp": smtp.counter.value, "posts": posts,
            "acts": acts, "distinct": distinct, "sups": sups, "during": during, "serve_cpu": serve_cpu}


def burst(template: Path, work: Path, env: dict[str, str], tokens: list[str], clients: int) -> list[float]:
    ws = work / "burst"
    shutil.copytree(template, ws)
    serve, url = start_serve(ws / "config.toml", env)
    try:
        proc, go, conn = start_clients(url, [[t] for t in tokens[:clients]], 0.0, 0)
        go.set()
        posts = conn.recv()
        proc.join(30)
    finally:
        stop_serve(serve)
    bad = [s for _, s, _ in posts if s != 200]
    if bad:
        print(f"  burst: {len(bad)} POSTs answered {sorted(set(bad))}")
    shutil.rmtree(ws)
    return [ms for ms, _, _ in posts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sends", type=int, default=5000, help="messages the worker sends per round")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--tokens-per-client", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="POSTs per token (a provider retrying)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each kind, taking turns")
    ap.add_argument("--burst", action="store_true", help="also: all clients POST at one instant, no send")
    args = ap.parse_args()

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    n_unsub = args.clients * args.tokens_per_client
    smtp = SmtpServer()
    work = Path(tempfile.mkdtemp(prefix="bench-unsub-"))
    try:
        template, tokens = prepare(work, smtp.port, args.sends, n_unsub, env)
        plan = [tokens[i * args.tokens_per_client:(i + 1) * args.tokens_per_client] * args.repeat
                for i in range(args.clients)]
        print(f"{args.sends} sends a round; {args.clients} clients x {args.tokens_per_client} tokens x "
              f"{args.repeat} POSTs = {args.clients * args.tokens_per_client * args.repeat} POSTs a round; "
              f"{args.rounds} rounds of each, taking turns; {os.cpu_count()} CPUs")
        base, with_posts = [], []
        spread = 0.0
        for r in range(args.rounds):
            b = one_round(template, work, smtp, env, args.sends, None, 0, r)
            base.append(b)
            spread = spread or 0.8 * b["send_seconds"]
            w = one_round(template, work, smtp, env, args.sends, plan, spread, r)
            with_posts.append(w)
            lat = [ms for ms, _, _ in w["posts"]]
            codes = sorted({s for _, s, _ in w["posts"]})
            print(f"round {r + 1}: baseline {b['rate']:.0f} msg/s | with POSTs {w['rate']:.0f} msg/s, "
                  f"{len(lat)} POSTs ({w['during']} during the send), codes {codes}, "
                  f"p50 {pct(lat, 50):.1f} p99 {pct(lat, 99):.1f} max {max(lat):.1f} ms; "
                  f"log: {w['acts']} unsubscribe activities ({w['distinct']} customers), {w['sups']} suppressions; "
                  f"sent {b['sent']}/{w['sent']}; serve CPU {w['serve_cpu'] * 1000 / max(1, len(lat)):.2f} ms a POST; "
                  f"load average {os.getloadavg()[0]:.1f}")
        lat = [ms for w in with_posts for ms, _, _ in w["posts"]]
        ok = all(s == 200 for w in with_posts for _, s, _ in w["posts"])
        exact = all(w["acts"] == w["distinct"] == w["sups"] == n_unsub for w in with_posts)
        same_sent = all(x["sent"] == x["smtp"] == args.sends for x in base + with_posts)
        rb = statistics.median(x["rate"] for x in base)
        rw = statistics.median(x["rate"] for x in with_posts)
        drop = (rb - rw) / rb * 100
        print()
        print(f"POST latency over {len(lat)} POSTs: p50 {pct(lat, 50):.1f} ms, p95 {pct(lat, 95):.1f} ms, "
              f"p99 {pct(lat, 99):.1f} ms, max {max(lat):.1f} ms  (target p99 < 50 ms: "
              f"{'met' if pct(lat, 99) < 50 else 'NOT met'})")
        print(f"every POST answered 200: {ok}; one activity and one suppression per token, none lost or doubled: "
              f"{exact}; every round sent all {args.sends}: {same_sent}")
        print(f"send rate (median): {rb:.0f} msg/s without, {rw:.0f} msg/s with the POSTs: drop {drop:.1f}% "
              f"(target < 10%: {'met' if drop < 10 else 'NOT met'})")
        if args.burst:
            b = burst(template, work, env, tokens, args.clients)
            print(f"burst, {len(b)} POSTs at one instant (no send): p50 {pct(b, 50):.1f} ms, "
                  f"p99 {pct(b, 99):.1f} ms, max {max(b):.1f} ms")
    finally:
        smtp.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
