"""Two workers fetching the same Dovecot folders at once, SIGKILLed at random instants (issue #20, kill test b).

The corpus of tests/integration/test_fetch_kill.py (about six hundred
messages in two folders, the same message in both, two oversized ones) is
fetched by two worker processes started together, again and again, each
killed at a random instant or left to finish, then both run to completion.
Two ways: the library's fetch stage driven directly (``Worker.fetch``),
without any lock — the strongest case, both reading the same messages from
the same cursor and racing on every insert, on both engines; and the real
``crm-automation fetch``, two fleet members on one PostgreSQL workspace,
where the per-folder fetch lock has them fetch the two folders at once.
Every message must then be logged once, every customer's reply forwarded to
its owner once, each oversized message quarantined once, and no finished
run may have counted a message the other one logged.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.fixtures.dovecot import write_imap_workspace
from tests.integration.test_fetch_kill import INBOUND, MAX_BYTES, PW_ENV, REPO, _Log, corpus

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTS = 6  # rounds at most, the mail delivered in as many parts
SECONDS = 12  # of kills and restarts, per run
OWNERS = 3

# One worker's fetch stage, as `crm-automation fetch` runs it but without taking the workspace lock.
WORKER = """
import logging, sys
from crm_automation.worker import Worker
from crm_automation.workspace import Workspace
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
w = Worker(Workspace.load(sys.argv[1]))
try:
    res = w.fetch()
finally:
    w.close()
sys.exit(3 if res.error is not None else 0)
"""


def _worker(cfg: Path, env: dict[str, str], cli: bool) -> tuple[subprocess.Popen[str], threading.Event]:
    """A worker process, and an event set once it has logged in to the mailbox (or ended).

    ``cli``: the real ``crm-automation fetch`` (a fleet member: the per-folder fetch lock, issue #20), else the
    library's fetch stage without any lock.
    """
    cmd = ["-m", "crm_automation", "--config", str(cfg), "fetch"] if cli else ["-c", WORKER, str(cfg)]
    proc = subprocess.Popen([sys.executable, *cmd], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started = threading.Event()
    err: list[str] = []

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err.append(line)
            if "logged in" in line:
                started.set()
        started.set()

    threading.Thread(target=watch, daemon=True).start()
    proc.err = err  # type: ignore[attr-defined]
    return proc, started


def _workspace(tmp_path: Path, imap_account, log_location: str) -> Path:
    """The kill test's workspace, each customer with an owner who is told of their replies."""
    customers = [(f"c{i}@customer.example.com", f"客户{i}") for i in range(40)]
    cfg = write_imap_workspace(tmp_path / "ws", imap_account, customers=customers, folders=("INBOX", "Support"),
                               password_env=PW_ENV, batch_size=10, max_message_bytes=MAX_BYTES,
                               database=log_location if log_location.startswith("postgresql://")
                               else "var/crm.sqlite")
    ws = cfg.parent
    (ws / "customers.csv").write_text("email,name,owner\n" + "".join(
        f"{e},{n},owner{i % OWNERS}@example.com\n" for i, (e, n) in enumerate(customers)), encoding="utf-8")
    with (ws / "mappings" / "customers.toml").open("a", encoding="utf-8") as f:
        f.write('owner = { column = "owner", type = "email" }\n')
    with cfg.open("a", encoding="utf-8") as f:
        f.write("notify_owner = true\n")  # the [outbound] table is the file's last
    return cfg


def _round(cfg: Path, env: dict[str, str], rng: random.Random, cli: bool) -> int:
    """Both workers started together; each killed at a random instant after its login, or (1 in 4) not."""
    workers = [_worker(cfg, env, cli) for _ in range(2)]
    kills = 0
    for _, started in workers:
        started.wait(30)
    for proc, _ in workers:
        if rng.random() < 0.75:
            time.sleep(rng.uniform(0.0, 0.12))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
    for proc, _ in workers:
        proc.wait(60)
        assert proc.returncode in (0, 1, -signal.SIGKILL), "".join(proc.err)[-3000:]  # type: ignore[attr-defined]
    return kills


def _deliver(account, boxes: dict[str, list[bytes]], part: int, parts: int) -> None:
    """The ``part``-th of ``parts`` slices of each folder's messages, written into its Maildir (new UIDs)."""
    for folder, msgs in boxes.items():
        base = account.maildir(folder)
        for sub in ("new", "cur", "tmp"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        if folder != "INBOX":
            (base / "maildirfolder").touch()
        size = -(-len(msgs) // parts)
        for i, raw in enumerate(msgs[part * size:(part + 1) * size]):
            (base / "new" / f"{int(time.time())}.M{part}x{i}P{os.getpid()}.crmtest").write_bytes(raw)
    account.server.chown_mail()


def test_two_workers_fetching_the_same_folders_killed_at_random_log_every_message_once(imap_account, tmp_path,
                                                                                       log_location):
    """On each backend: SQLite serialises the two at BEGIN IMMEDIATE; PostgreSQL lets them race.

    The mail arrives in parts, one before each round, so every round's two
    workers race on messages neither has logged yet.
    """
    _kill_and_check(imap_account, tmp_path, log_location, cli=False)


def test_two_crm_automation_fetch_processes_killed_at_random_log_every_message_once(imap_account, tmp_path, pg_log):
    """The real CLI, two fleet members on one PostgreSQL workspace (issue #20): each folder fetched by one at a time.

    The fleet's per-folder fetch lock lets the two fetch the two folders at
    once, so a message delivered to both races between them: here every
    customer's reply is (CC to the Support folder), first in both folders.
    """
    _kill_and_check(imap_account, tmp_path, pg_log, cli=True)


def _kill_and_check(imap_account, tmp_path: Path, log_location: str, *, cli: bool) -> None:
    boxes, expected_ids, n_quarantined = corpus()
    if cli:  # each folder fetched by one worker at a time: the customers' replies CC'd to Support too, so they race
        boxes["Support"] = [b"Delivered-To: support@mail.example.test\r\n" + m for m in boxes["INBOX"][:360]] \
            + boxes["Support"]
    cfg = _workspace(tmp_path, imap_account, log_location)
    env = {**os.environ, PW_ENV: imap_account.password,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    sync = subprocess.run([sys.executable, "-m", "crm_automation", "--config", str(cfg), "sync"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert sync.returncode == 0, sync.stderr

    seed = int(os.environ.get("CRM_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    killed = rounds = 0
    deadline = time.monotonic() + SECONDS
    while rounds < PARTS and time.monotonic() < deadline:
        _deliver(imap_account, boxes, rounds, PARTS)
        killed += _round(cfg, env, rng, cli)
        rounds += 1
    for part in range(rounds, PARTS):
        _deliver(imap_account, boxes, part, PARTS)
    for proc, _ in [_worker(cfg, env, cli) for _ in range(2)]:  # both to the end, together
        proc.wait(120)
        assert proc.returncode in (0, 1), "".join(proc.err)[-3000:]  # type: ignore[attr-defined]
    if cli:  # a folder the other worker held was skipped: one more run finds what is left
        final = subprocess.run([sys.executable, "-m", "crm_automation", "--config", str(cfg), "fetch"], env=env,
                               capture_output=True, text=True, timeout=120, check=False)
        assert final.returncode in (0, 1), final.stderr
    assert killed >= 3, f"seed {seed}: only {killed} workers were killed mid-fetch; the test proved little"

    log = _Log(log_location if log_location.startswith("postgresql://") else str(cfg.parent / "var" / "crm.sqlite"))
    rows = log.rows(f"SELECT message_id, COUNT(*) FROM activities WHERE kind IN ({','.join('?' * len(INBOUND))}) "
                    "GROUP BY message_id", tuple(INBOUND))
    counts = Counter({mid: c for mid, c in rows})
    assert {m: c for m, c in counts.items() if c != 1} == {}, f"seed {seed}: logged more than once"
    assert set(counts) == expected_ids, f"seed {seed}: missing {sorted(expected_ids - set(counts))[:5]}"
    assert log.rows("SELECT COUNT(*) FROM quarantine")[0][0] == n_quarantined
    # One note to the owner per customer's reply (360 replies, 10 more delivered to both folders), each
    # forwarding its own activity.
    notes = log.rows("SELECT s.step_id, a.kind, a.customer_key FROM sends s LEFT JOIN activities a "
                     "ON CAST(a.id AS TEXT) = s.step_id WHERE s.kind = 'owner_notification'")
    assert len(notes) == 370, f"seed {seed}: {len(notes)} owner notes for 370 replies"
    assert {(k, c is not None) for _, k, c in notes} == {("email_in", True)}
    for folder in boxes:
        (state,) = log.rows("SELECT uidvalidity, last_uid FROM mailbox_state WHERE folder = ?", (folder,))
        assert state == (imap_account.uidvalidity(folder), max(imap_account.uids(folder))), folder
    # What the finished runs counted as new: never a message twice across the two workers (a killed run
    # records nothing, so the sum may fall short of the corpus, never exceed it).
    stats = [json.loads(s) for (s,) in log.rows("SELECT stats FROM runs WHERE job = 'fetch' AND "
                                                 "finished_at IS NOT NULL AND stats IS NOT NULL")]
    new = sum(s.get("messages", 0) - s.get("duplicates", 0) for s in stats)
    assert new <= len(expected_ids) + n_quarantined, f"seed {seed}: {new} messages counted new"
    assert sum(s.get("quarantined", 0) for s in stats) <= n_quarantined, f"seed {seed}: quarantined twice"
    print(f"seed {seed}: {rounds} rounds, {killed} kills, {len(stats)} finished runs counted {new} new")
