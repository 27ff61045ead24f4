"""Fetch benchmark (issues #4 and #13, Performance): crm-automation vs mbsync and a bare fetch loop.

    python benchmarks/bench_fetch.py                 # 10,000 messages
    python benchmarks/bench_fetch.py --messages 100000 --skip-mbsync   # the memory bound

Starts a Dovecot on 127.0.0.1 (tests/fixtures/dovecot.py, the same code the test
suite uses), loads generated messages into one user's INBOX, lets Dovecot build
its index once, then measures side by side in one run:

* ``mbsync`` (isync) copying INBOX into an empty Maildir (plain IMAP on loopback),
  with its default fsync per message;
* ``crm-automation fetch`` (the real CLI, a subprocess) into an empty log:
  wall time, and peak RSS of that process and of its helper processes;
* the fetch stage in this process (``Worker.fetch``) into another empty log,
  ``--rounds`` times, against the floor measured in the same rounds: the bare
  imapclient loop (log in, EXAMINE, ``UID SEARCH``, ``UID FETCH BODY.PEEK[]``
  500 at a time, nothing parsed or kept);
* the ``ImapSource.fetch`` loop alone (our IMAP adapter, no parsing or logging);
* a poll with no new mail: the CLI again (includes Python start-up), the IMAP
  part alone, and the worker's fetch stage.

Needs root (Dovecot's users), ``dovecot`` and, for the comparison, ``mbsync``.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import json
import os
import quopri
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crm_automation.config import load_config  # noqa: E402
from crm_automation.mailbox.base import Cursor  # noqa: E402
from crm_automation.mailbox.imap import ImapSource  # noqa: E402
from tests.fixtures.dovecot import make_message, start_dovecot, write_imap_workspace  # noqa: E402

PW_ENV = "CRM_BENCH_IMAP_PASSWORD"
LINES_ZH = ["您好，报价单已收到，我们内部讨论后回复您。", "请问交货期能否提前到下月初？", "合同我们已经盖章，请查收。",
            "发自我的iPhone", "谢谢！"]
LINES_EN = ["Thanks for the quote, we will get back to you next week.", "Could you send the updated price list?",
            "Best regards,", "Sent from my iPhone"]


def generate(n: int, customers: int, multipart: float = 0.4) -> list[bytes]:
    """Half Chinese, a third from customers; ``multipart`` of them (two in five by default) as mail clients send them.

    The rest are one-part text/plain messages of about 660 bytes. The multipart
    ones are multipart/alternative with a text and an HTML part (about 1.5 KB):
    the Chinese ones as QQ Mail and Foxmail write them (GB18030, base64), the
    English ones as Outlook does (UTF-8, quoted-printable). Both shapes matter:
    the stdlib's parser costs several times more on the second (issue #13).
    """
    rng = random.Random(4)
    out = []
    for i in range(n):
        sender = f"c{i % customers}@customer.example.com" if i % 3 == 0 else f"someone{i}@elsewhere.example.net"
        zh = i % 2 == 1
        lines = LINES_ZH if zh else LINES_EN
        text = "\n".join(rng.choice(lines) for _ in range(8))
        text += "\n\n> " + "\n> ".join(rng.choice(lines) for _ in range(4))
        subject = f"Re: 报价 {i}" if zh else f"Re: quote {i}"
        if int((i + 1) * multipart) > int(i * multipart):  # spread evenly, as many Chinese as English
            out.append(_alternative(i, sender, subject, text, zh))
        else:
            out.append(make_message(i, sender=sender, subject=subject, body=text.replace("\n", "\r\n")))
    return out


def _alternative(i: int, sender: str, subject: str, text: str, zh: bool) -> bytes:
    """multipart/alternative, text and HTML, as QQ Mail (zh: GB18030, base64) or Outlook (UTF-8, QP) sends it."""
    html = "<html><body>" + "".join(f"<div>{line}</div>" for line in text.split("\n")) + "</body></html>"
    charset, cte = ("gb18030", "base64") if zh else ("utf-8", "quoted-printable")

    def encode(s: str) -> bytes:
        data = s.encode(charset)
        enc = base64.encodebytes(data) if zh else quopri.encodestring(data)
        return enc.replace(b"\n", b"\r\n")

    boundary = f"----=_NextPart_{i:08X}_{i * 7919 % 65536:04X}"
    head = (f"From: {sender}\r\nTo: sales@example.test\r\nSubject: {subject}\r\n"
            f"Date: {email.utils.formatdate(1_780_000_000 + i * 60)}\r\nMessage-ID: <alt-{i}@example.test>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
            "This is a multi-part message in MIME format.\r\n\r\n")
    parts = b"".join(
        (f"--{boundary}\r\nContent-Type: {ctype};\r\n\tcharset=\"{charset}\"\r\n"
         f"Content-Transfer-Encoding: {cte}\r\n\r\n").encode() + encode(body) + b"\r\n"
        for ctype, body in (("text/plain", text), ("text/html", html)))
    return head.encode("utf-8") + parts + f"--{boundary}--\r\n".encode()


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, int]:
    """Wall seconds, exit status and peak RSS (MB) of one child process.

    The peak is the child's own ``VmHWM``, sampled every 20 ms until it exits:
    ``ru_maxrss`` from wait4 would also count this (large) benchmark process,
    whose high-water mark a child inherits across fork and exec on Linux.
    """
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    peak_kb = 0
    err: list[bytes] = []
    drain = threading.Thread(target=lambda: err.append(proc.stderr.read() if proc.stderr else b""), daemon=True)
    drain.start()
    status = Path(f"/proc/{proc.pid}/status")
    helpers_kb: dict[str, int] = {}
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            for kid in kids:
                for line in Path(f"/proc/{kid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        helpers_kb[kid] = max(helpers_kb.get(kid, 0), int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    run_timed.helpers_mb = [kb // 1024 for kb in helpers_kb.values()]  # type: ignore[attr-defined]
    wall = time.perf_counter() - t
    drain.join(timeout=5)
    code = proc.returncode
    if code not in (0, 1):
        print(f"  ! {cmd[0]} exited {code}: {b''.join(err).decode(errors='replace')[-800:]}", file=sys.stderr)
    return wall, code, peak_kb // 1024


def bare_imapclient(server, account, batch: int) -> tuple[float, int]:
    """The floor: what any program pays to get the bodies out of the server with imapclient."""
    import imapclient

    t = time.perf_counter()
    c = imapclient.IMAPClient(server.host, port=server.port, ssl=False)
    c.login(account.user, account.password)
    c.select_folder("INBOX", readonly=True)
    uids = c.search(["ALL"])
    n = 0
    for i in range(0, len(uids), batch):
        n += len(c.fetch(uids[i:i + batch], ["BODY.PEEK[]"]))
    c.logout()
    return time.perf_counter() - t, n


def fetch_stage(root: Path, account, customers, batch: int, i: int,
                parallel: dict[str, int] | None = None) -> tuple[float, dict[str, int]]:
    """Our fetch stage in this process, into an empty log (a fresh workspace each time)."""
    from crm_automation.worker import Worker
    from crm_automation.workspace import Workspace

    cfg = write_imap_workspace(root / f"stage{i}", account, customers=customers, password_env=PW_ENV,
                               batch_size=batch)
    worker = Worker(Workspace.load(cfg))
    worker.sync()
    worker.inbound.parallel = parallel or {}
    t = time.perf_counter()
    res = worker.fetch()
    wall = time.perf_counter() - t
    worker.close()
    return wall, res.stats


def mbsync(server, account, work: Path, *, fsync: bool = True) -> tuple[float, int, int] | None:
    exe = shutil.which("mbsync")
    if exe is None:
        return None
    local = work / "mbsync-maildir"
    local.mkdir()
    rc = work / "mbsyncrc"
    rc.write_text(
        ("" if fsync else "FSync no\n\n") + f"IMAPAccount bench\nHost {server.host}\nPort {server.port}\nUser {account.user}\n"
        f"PassCmd \"printenv {PW_ENV}\"\nSSLType None\nAuthMechs LOGIN\n\n"
        f"IMAPStore remote\nAccount bench\n\n"
        f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\n\n"
        f"Channel bench\nFar :remote:\nNear :local:\nPatterns INBOX\nCreate Near\nSync Pull\n"
        f"SyncState *\nExpunge None\n", encoding="utf-8")
    env = {**os.environ, PW_ENV: account.password}
    result = run_timed([exe, "-q", "-c", str(rc), "bench"], env)
    copied = sum(1 for _ in (local / "INBOX" / "new").iterdir()) + sum(1 for _ in (local / "INBOX" / "cur").iterdir())
    print(f"  mbsync copied {copied} messages")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--multipart", type=float, default=0.4,
                    help="share of multipart/alternative messages (text + HTML); the rest are one text part")
    ap.add_argument("--skip-mbsync", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="in-process rounds of (bare loop, our fetch stage)")
    ap.add_argument("--parallel", default="{}", help='helper settings for the in-process rounds, e.g. {"helpers": 0}')
    ap.add_argument("--mbsync-no-fsync", action="store_true",
                    help="also time mbsync with FSync no (its default fsyncs every message; on a slow disk that "
                         "dominates)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="crm-bench-"))
    server = start_dovecot()
    try:
        account = server.add_user()
        msgs = generate(args.messages, customers=200, multipart=args.multipart)
        t = time.perf_counter()
        account.load_maildir(msgs)
        size_mb = sum(len(m) for m in msgs) / 1e6
        del msgs
        print(f"{args.messages} messages ({size_mb:.1f} MB) written in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        account.uids()  # let Dovecot index the folder once, so no contender pays for it
        print(f"Dovecot indexed them in {time.perf_counter() - t:.1f} s")

        rows: list[tuple[str, str, str, str]] = []
        if not args.skip_mbsync:
            res = mbsync(server, account, work)
            if res is None:
                rows.append(("mbsync -> Maildir", "not installed", "", ""))
            else:
                rows.append(("mbsync -> Maildir", f"{res[0]:.2f} s", f"{res[2]} MB", f"exit {res[1]}"))
                if args.mbsync_no_fsync:
                    nofs = work / "nofsync"
                    nofs.mkdir()
                    res = mbsync(server, account, nofs, fsync=False)
                    assert res is not None
                    rows.append(("mbsync -> Maildir, FSync no", f"{res[0]:.2f} s", f"{res[2]} MB", f"exit {res[1]}"))

        customers = [(f"c{i}@customer.example.com", f"客户{i}") for i in range(200)]
        cfg = write_imap_workspace(work / "ws", account, customers=customers, password_env=PW_ENV,
                                   batch_size=args.batch)
        env = {**os.environ, PW_ENV: account.password,
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        cli = [sys.executable, "-m", "crm_automation", "--config", str(cfg), "-q"]
        sync = run_timed([*cli, "sync"], env)
        print(f"  crm-automation sync: {sync[0]:.2f} s")
        wall, code, rss = run_timed([*cli, "fetch"], env)
        db = sqlite3.connect(work / "ws" / "var" / "crm.sqlite")
        logged = db.execute("SELECT COUNT(*) FROM activities WHERE message_id IS NOT NULL").fetchone()[0]
        quarantined = db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        db.close()
        helpers = getattr(run_timed, "helpers_mb", [])
        rows.append(("crm-automation fetch (CLI, empty log)", f"{wall:.2f} s", f"{rss} MB",
                     f"exit {code}; {logged} logged, {quarantined} quarantined; helper processes' peaks "
                     f"{helpers} MB"))
        startup = run_timed([sys.executable, "-c", "import crm_automation.cli"], env)
        rows.append(("  of which Python start-up + imports", f"{startup[0]:.2f} s", f"{startup[2]} MB", ""))
        poll = run_timed([*cli, "fetch"], env)
        rows.append(("poll, no new mail (CLI)", f"{poll[0]:.2f} s", f"{poll[2]} MB", f"exit {poll[1]}"))

        os.environ[PW_ENV] = account.password
        ratios = []
        for i in range(args.rounds):
            floor, n_bare = bare_imapclient(server, account, args.batch)
            ours, stats = fetch_stage(work, account, customers, args.batch, i, json.loads(args.parallel))
            ratios.append(ours / floor)
            rows.append((f"round {i + 1}: bare imapclient loop | our fetch stage", f"{floor:.2f} s",
                         f"{ours:.2f} s", f"{ours / floor:.2f}x; {n_bare} bodies; {stats.get('messages')} logged"))
        rows.append(("  ratio, median of the rounds", f"{sorted(ratios)[len(ratios) // 2]:.2f}x", "", "target <= 3x"))
        src = ImapSource.from_config(load_config(cfg))
        t = time.perf_counter()
        n = 0
        last = None
        for m in src.fetch("INBOX", None, batch=args.batch):
            n += 1
            last = m
        bare = time.perf_counter() - t
        src.close()
        rows.append(("ImapSource.fetch loop alone (in process)", f"{bare:.2f} s", "", f"{n} messages"))
        assert last is not None
        polls = []
        for _ in range(5):
            t = time.perf_counter()
            src = ImapSource.from_config(load_config(cfg))
            got = list(src.fetch("INBOX", Cursor(last.uidvalidity, last.uid)))
            src.close()
            polls.append(time.perf_counter() - t)
            assert got == []
        rows.append(("poll, no new mail (IMAP part, best of 5)", f"{min(polls) * 1000:.0f} ms", "",
                     "connect + login + EXAMINE + logout"))
        # What the scheduled `run` does at each fetch interval: the whole fetch stage, log included.
        from crm_automation.worker import Worker
        from crm_automation.workspace import Workspace

        worker = Worker(Workspace.load(cfg))
        polls = []
        for _ in range(5):
            t = time.perf_counter()
            res = worker.fetch()
            polls.append(time.perf_counter() - t)
            assert res.stats["messages"] == 0, res.stats
        worker.close()
        rows.append(("poll, no new mail (worker fetch stage, best of 5)", f"{min(polls) * 1000:.0f} ms", "",
                     "what `run` does each fetch interval"))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    w = max(len(r[0]) for r in rows)
    print(f"\n{'what':<{w}}  {'time':>10}  {'peak RSS':>9}  notes")
    for what, tm, rss_s, note in rows:
        print(f"{what:<{w}}  {tm:>10}  {rss_s:>9}  {note}")


if __name__ == "__main__":
    main()
