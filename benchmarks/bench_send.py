"""Send one campaign to N customers over loopback SMTP, side by side (issue #5 "Performance").

Measured in one run, against one counting-only aiosmtpd server in a separate
process (so it does not share the GIL with the client, and does no parsing that
would hide every difference):

  ours        `python -m crm_automation --config CFG send` (after an untimed `sync`),
              exactly-once bookkeeping included; max_per_minute = max_per_day = 0.
  mailmerge   mailmerge 2.3 from PyPI, installed into a throw-away venv under a
              temp dir, same data and template, `--no-limit`, security none.
  bare loop   Jinja2 render + EmailMessage + smtplib send_message over one connection,
              no bookkeeping.
  floor       the same messages prebuilt as bytes, smtplib sendmail over one connection.
  floor/ours  the prebuilt bytes through crm_automation's SmtpTransport (its own overhead).

Targets: ours >= 2x faster than mailmerge, ours no slower than the bare loop.

    python benchmarks/bench_send.py                 # 5,000 messages
    python benchmarks/bench_send.py --count 2000 --no-mailmerge

Not part of the test suite. Network: 127.0.0.1 only (plus `pip install` from the
package index for mailmerge, unless --no-mailmerge).
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FROM = "销售部 <sales@example.com>"
FROM_ADDR = "sales@example.com"
SUBJECT = "{{ name }}，年终老客户专享优惠"
BODY = (
    "{{ name }}您好：\n\n"
    "感谢{{ company }}一直以来的信任与支持！\n"
    "年终老客户可享订单九折优惠，12 月 31 日前有效。\n\n"
    "销售部\n\n"
    "回复“退订”即可不再收到此类邮件：mailto:sales@example.com?subject=unsubscribe\n"
)


# -- the counting server (child process) -----------------------------------------------------------


def _serve(conn, counter) -> None:
    import asyncio

    from aiosmtpd.smtp import SMTP

    class Counting:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            counter.value += 1
            return "250 OK"

    handler = Counting()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # hostname given: aiosmtpd would otherwise look up the FQDN on every connection.
    server = loop.run_until_complete(loop.create_server(
        lambda: SMTP(handler, hostname="bench.local", ident="bench", loop=loop), "127.0.0.1", 0))
    conn.send(server.sockets[0].getsockname()[1])
    loop.run_forever()


class Server:
    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.counter = ctx.Value("q", 0, lock=False)
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, self.counter), daemon=True)
        self.proc.start()
        if not parent.poll(30):
            raise SystemExit("the counting SMTP server did not start")
        self.port = parent.recv()

    @property
    def count(self) -> int:
        return self.counter.value

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(5)


# -- data -------------------------------------------------------------------------------------------


def make_rows(n: int) -> list[dict[str, str]]:
    return [{"email": f"c{i:05d}@example.net", "name": f"客户{i}", "company": f"公司{i}"} for i in range(n)]


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["email", "name", "company"])
        w.writeheader()
        w.writerows(rows)


# -- contenders -----------------------------------------------------------------------------------------


def build(rows, n_offset=0):
    """Render and build EmailMessages the way a careful hand-written script would."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    subject, body = env.from_string(SUBJECT), env.from_string(BODY)
    for row in rows:
        msg = EmailMessage()
        msg["From"] = FROM
        msg["To"] = row["email"]
        msg["Subject"] = subject.render(**row)
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain="example.com")
        msg["List-Unsubscribe"] = "<mailto:sales@example.com?subject=unsubscribe>"
        msg.set_content(body.render(**row))
        yield row, msg


def run_bare_loop(port: int, rows) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.local") as smtp:
        for _row, msg in build(rows):
            smtp.send_message(msg)


def prebuild(rows) -> list[tuple[str, bytes]]:
    return [(row["email"], msg.as_bytes(policy=SMTP_POLICY)) for row, msg in build(rows)]


def run_floor(port: int, prebuilt) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.local") as smtp:
        for to, data in prebuilt:
            smtp.sendmail(FROM_ADDR, [to], data)


def run_floor_transport(port: int, prebuilt) -> None:
    sys.path.insert(0, str(REPO))
    from crm_automation.transports.smtp import SmtpTransport

    with SmtpTransport("127.0.0.1", port, security="none", local_hostname="bench.local") as t:
        for i, (to, data) in enumerate(prebuilt):
            t.send(data, sender=FROM_ADDR, recipients=[to], message_id=f"<{i}@example.com>")


def setup_mailmerge(work: Path, port: int) -> list[str]:
    venv = work / "mailmerge-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = venv / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", "--disable-pip-version-check", "mailmerge==2.3"], check=True)
    (work / "mm_template.txt").write_text(
        f"TO: {{{{ email }}}}\nSUBJECT: {SUBJECT}\nFROM: {FROM}\n"
        "List-Unsubscribe: <mailto:sales@example.com?subject=unsubscribe>\n\n" + BODY,
        encoding="utf-8")
    (work / "mm_server.conf").write_text(f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\n", encoding="utf-8")
    return [str(venv / "bin" / "mailmerge"), "--no-dry-run", "--no-limit", "--output-format", "raw",
            "--template", str(work / "mm_template.txt"), "--database", str(work / "customers.csv"),
            "--config", str(work / "mm_server.conf")]


def setup_ours(work: Path, port: int) -> Path:
    ws = work / "ws"
    (ws / "mappings").mkdir(parents=True)
    (ws / "email_templates").mkdir()
    for sub in ("cur", "new", "tmp"):
        (ws / "inbox" / sub).mkdir(parents=True)
    shutil.copy(work / "customers.csv", ws / "customers.csv")
    (ws / "mappings" / "customers.toml").write_text(
        'key = "email"\n\n[fields]\n'
        'email = { column = "email", type = "email", required = true }\n'
        'name = { column = "name", required = true }\n'
        'company = { column = "company" }\n', encoding="utf-8")
    (ws / "mappings" / "campaigns.toml").write_text(
        '[[campaign]]\nid = "bench"\ntemplate = "bench"\ntrigger = "at"\nat = "2026-01-01T10:00"\n',
        encoding="utf-8")
    (ws / "email_templates" / "bench.txt").write_text(
        f"Subject: {SUBJECT.replace('{{ name }}', '{{ customer.name }}')}\n\n"
        + BODY.replace("{{ name }}", "{{ customer.name }}").replace("{{ company }}", "{{ customer.company }}"),
        encoding="utf-8")
    cfg = ws / "config.toml"
    cfg.write_text(
        '[workspace]\ntimezone = "Asia/Shanghai"\ndatabase = "var/crm.sqlite"\n\n'
        '[sheet]\nsource = "csv"\npath = "customers.csv"\nwriteback = false\n\n'
        '[mailbox]\nsource = "maildir"\npath = "inbox"\n\n'
        f'[outbound]\ntransport = "smtp"\nfrom = "{FROM}"\nhost = "127.0.0.1"\nport = {port}\n'
        'security = "none"\nmax_per_minute = 0\nmax_per_day = 0\n', encoding="utf-8")
    return cfg


def ours_cmd(cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "crm_automation", "--config", str(cfg), "-q", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def timed(server: Server, n: int, fn) -> float:
    start_count = server.count
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    got = server.count - start_count
    if got != n:
        raise SystemExit(f"expected the server to count {n} messages, it counted {got}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=5000, help="customers / messages (default 5000)")
    ap.add_argument("--no-mailmerge", action="store_true", help="skip the mailmerge comparison (no pip install)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (workspace, venv) and print its path")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds of (ours, mailmerge), the log put back before each; medians reported")
    args = ap.parse_args()
    n = args.count
    work = Path(tempfile.mkdtemp(prefix="crm-bench-send-"))
    server = Server()
    results: dict[str, float] = {}
    try:
        rows = make_rows(n)
        write_csv(work / "customers.csv", rows)
        mm_cmd = None if args.no_mailmerge else setup_mailmerge(work, server.port)
        cfg = setup_ours(work, server.port)
        subprocess.run(ours_cmd(cfg, "sync"), check=True, env=_env(), stdout=subprocess.DEVNULL)
        # Byte-compile the package first, as `pip install` does for users (this machine sets
        # PYTHONDONTWRITEBYTECODE, which would otherwise recompile every module in every run; bench_sync does the same).
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "crm_automation")], check=False,
                       stdout=subprocess.DEVNULL)
        # The workspace after sync (log and its marker), put back before each round: each round sends to everyone.
        synced = work / "ws-synced"
        shutil.copytree(cfg.parent, synced)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import crm_automation.cli"], check=True, env=_env())
        startup = time.perf_counter() - t0
        print(f"{n} messages to a counting aiosmtpd server on 127.0.0.1:{server.port} (separate process)\n")

        def ours() -> None:
            r = subprocess.run(ours_cmd(cfg, "send"), env=_env(), capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise SystemExit(f"crm_automation send failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")

        def mailmerge() -> None:
            assert mm_cmd is not None
            subprocess.run(mm_cmd, check=True, stdout=subprocess.DEVNULL, cwd=work)

        # Rounds taking turns (ours, mailmerge, ours, ...): on a shared 2-core machine the load drifts, and a
        # ratio taken within one round holds where two single runs minutes apart do not.
        ours_s, mm_s = [], []
        for _ in range(max(1, args.rounds)):
            shutil.rmtree(cfg.parent)
            shutil.copytree(synced, cfg.parent)
            ours_s.append(timed(server, n, ours))
            if mm_cmd:
                mm_s.append(timed(server, n, mailmerge))
        results["ours: crm_automation send"] = statistics.median(ours_s)
        if mm_s:
            results["(a) mailmerge 2.3 --no-limit"] = statistics.median(mm_s)
            rounds = ", ".join(f"{m / o:.2f}x" for o, m in zip(ours_s, mm_s, strict=True))
            print(f"rounds (mailmerge / ours): {rounds}; median of the rounds "
                  f"{statistics.median(m / o for o, m in zip(ours_s, mm_s, strict=True)):.2f}x\n")
        results["(b) bare loop: jinja2 + EmailMessage + smtplib"] = timed(server, n, lambda: run_bare_loop(server.port, rows))
        prebuilt = prebuild(rows)
        results["(c) floor: prebuilt bytes, smtplib.sendmail"] = timed(server, n, lambda: run_floor(server.port, prebuilt))
        results["(c') prebuilt bytes through SmtpTransport"] = timed(
            server, n, lambda: run_floor_transport(server.port, prebuilt))
    finally:
        server.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    width = max(len(k) for k in results)
    for name, secs in results.items():
        print(f"  {name:<{width}}  {secs * 1000 / n:6.2f} ms/message  ({secs:6.2f} s)")
    ours_s = results["ours: crm_automation send"]
    print(f"\n  process start-up of the CLI (import only): {startup:.2f} s, included in 'ours'")
    print(f"  ours excluding start-up: {(ours_s - startup) * 1000 / n:.2f} ms/message")
    mm = results.get("(a) mailmerge 2.3 --no-limit")
    if mm:
        print(f"  mailmerge / ours: {mm / ours_s:.2f}x  (target >= 2x)")
    bare = results["(b) bare loop: jinja2 + EmailMessage + smtplib"]
    print(f"  ours / bare loop: {ours_s / bare:.2f}  (target <= 1.0)")
    floor = results["(c) floor: prebuilt bytes, smtplib.sendmail"]
    print(f"  ours / floor:     {ours_s / floor:.2f}")


if __name__ == "__main__":
    main()
