"""A real long-running ``crm-automation run`` uses what is on disk at each pass (issue #17, items 5 and 10).

The worker runs in a subprocess with a 1-second ``[schedule]`` and the
outbox transport; the test edits templates, mappings, the config and the
sheet under it, and counts what each address received in the outbox. Every
wait is for a condition (a row in the log, a file in the outbox), never a
fixed sleep, so a slow 2-core machine only makes it slower.

Files are replaced the way editors save them (a temporary file renamed over
the old one), except where a test edits a template in place on purpose
(same inode, size and mtime: only its content says it changed).
"""

from __future__ import annotations

import csv
import email
import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from email import policy
from pathlib import Path

import pytest

from tests.fixtures.core import make_workspace

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCHEDULE = '[schedule]\nsync_every = "1s"\nfetch_every = "1s"\nsend_every = "1s"\n'
WELCOME = '[[campaign]]\nid = "welcome"\ntemplate = "welcome"\ntrigger = "new"\ninclude_existing = true\n'
PROMO = '[[campaign]]\nid = "{id}"\ntemplate = "promo"\ntrigger = "at"\nat = "2026-01-01T10:00"\n'
HEADERS = ["Email", "Name", "Stage", "Owner"]
_n = 0


def row(i: int) -> dict[str, str]:
    return {"Email": f"c{i}@example.com", "Name": f"Customer {i}", "Stage": "lead", "Owner": "owner@example.com"}


def replace_file(path: Path, data: str | bytes) -> None:
    """Save as editors do: a temporary file in the same folder, renamed over the old one."""
    tmp = path.with_name(f".{path.name}.saving")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def write_sheet(ws: Path, rows: list[dict[str, str]], headers: list[str] = HEADERS) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(headers)
    w.writerows([[r[h] for h in HEADERS] for r in rows])
    replace_file(ws / "customers.csv", buf.getvalue())


def edit_in_place_same_tick(path: Path, old: str, new: str) -> None:
    """Change ``old`` to ``new`` (same length) in place, keeping inode, size and mtime."""
    before = path.stat()
    text = path.read_text(encoding="utf-8")
    assert len(old) == len(new) and old in text
    with path.open("r+b") as f:
        f.write(text.replace(old, new).encode())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def deliver(ws: Path, sender: str, subject: str, body: str) -> None:
    """A message into the Maildir as an MTA delivers it: written in tmp/, renamed into new/."""
    global _n
    _n += 1
    name = f"{time.time_ns()}.{_n}.test"
    raw = (f"From: {sender}\r\nTo: sales@example.com\r\nSubject: {subject}\r\n"
           f"Message-ID: <m{_n}.{time.time_ns()}@example.com>\r\nDate: Fri, 27 Nov 2026 09:00:00 +0800\r\n"
           f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()
    (ws / "inbox" / "tmp" / name).write_bytes(raw)
    os.replace(ws / "inbox" / "tmp" / name, ws / "inbox" / "new" / name)


class Running:
    """``crm-automation run`` in a subprocess; its output goes to a file the test can read at any time."""

    def __init__(self, cfg: Path) -> None:
        self.ws = cfg.parent
        self.db = self.ws / "var" / "crm.sqlite"
        self.log_path = self.ws / "worker.log"
        self._log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("CRM_AUTOMATION_CONFIG", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "crm_automation", "run", "--config", str(cfg)],
                                     env=env, cwd=self.ws, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, what: str, cond: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the worker exited with {self.proc.returncode} while waiting for {what}:\n"
                                     f"{self.output()[-4000:]}")
            try:
                if cond():
                    return
            except sqlite3.OperationalError:  # the log is still being created
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()[-4000:]}")

    def query(self, sql: str, *args: object) -> list[tuple]:
        if not self.db.exists():
            return []
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def runs(self, job: str, error_like: str = "%") -> int:
        return self.query("SELECT COUNT(*) FROM runs WHERE job = ? AND finished_at IS NOT NULL AND "
                          "coalesce(error, '') LIKE ?", job, error_like)[0][0]

    def wait_for_runs(self, what: str, job: str, error_like: str, more: int = 2) -> None:
        """Wait until ``more`` further finished ``job`` runs have an error like ``error_like``."""
        start = self.runs(job, error_like)
        self.wait_for(what, lambda: self.runs(job, error_like) >= start + more)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def stopped_cleanly(self) -> None:
        self.stop()
        out = self.output()
        assert self.proc.returncode == 0, out[-4000:]
        assert "Traceback" not in out and "worker stopped" in out


def outbox(ws: Path) -> dict[str, list[email.message.EmailMessage]]:
    """What each address received, in the order the files were written."""
    got: dict[str, list[email.message.EmailMessage]] = {}
    folder = ws / "var" / "outbox"
    files = sorted(folder.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns) if folder.is_dir() else []
    for f in files:
        msg = email.message_from_bytes(f.read_bytes(), policy=policy.default)
        got.setdefault(msg["To"].addresses[0].addr_spec, []).append(msg)
    return got


def subjects(ws: Path) -> dict[str, list[str]]:
    return {to: [str(m["Subject"]) for m in msgs] for to, msgs in outbox(ws).items()}


def parts(msg: email.message.EmailMessage) -> tuple[str, str]:
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    return (text.get_content() if text else "", html.get_content() if html else "")  # type: ignore[union-attr]


@pytest.fixture
def running():
    started: list[Running] = []

    def start(cfg: Path) -> Running:
        w = Running(cfg)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


# ---------------------------------------------------------------- item 5: templates as on disk


def test_a_running_worker_renders_each_template_as_it_is_on_disk(tmp_path, running):
    templates = {
        "welcome.txt": "Subject: W-v1 {{ customer.name }}\n\nHello {{ customer.name }}\n{% include '_sig.txt' %}",
        "welcome.html": "{% extends '_layout.html' %}{% block body %}<p>Hi {{ customer.name }}</p>{% endblock %}",
        "_layout.html": "<html><body>LAYOUT-1 {% block body %}{% endblock %}</body></html>",
        "_sig.txt": "SIG-1\n"}
    cfg = make_workspace(tmp_path / "ws", rows=[row(0)], campaigns=WELCOME, templates=templates,
                         extra_config=SCHEDULE)
    ws = cfg.parent
    tpl = ws / "email_templates"
    w = running(cfg)
    w.wait_for("the welcome to c0", lambda: "c0@example.com" in outbox(ws))
    text, html = parts(outbox(ws)["c0@example.com"][0])
    assert "SIG-1" in text and "LAYOUT-1" in html

    # Edited in place within the same mtime tick (size and inode kept): the template, its layout, its include.
    edit_in_place_same_tick(tpl / "welcome.txt", "W-v1", "W-v2")
    edit_in_place_same_tick(tpl / "_layout.html", "LAYOUT-1", "LAYOUT-2")
    edit_in_place_same_tick(tpl / "_sig.txt", "SIG-1", "SIG-2")
    write_sheet(ws, [row(0), row(1)])  # a new customer, due after the edits
    w.wait_for("the welcome to c1", lambda: "c1@example.com" in outbox(ws))
    msg = outbox(ws)["c1@example.com"][0]
    text, html = parts(msg)
    assert str(msg["Subject"]) == "W-v2 Customer 1"
    assert "SIG-2" in text and "LAYOUT-2" in html

    # A syntax error holds the campaign: the customer added meanwhile is not mailed ...
    replace_file(tpl / "welcome.txt", "Subject: W-v3 {{ customer.name }\n\nHello\n")
    w.wait_for_runs("a send pass held by the broken template", "send", "%template problems hold%", more=1)
    write_sheet(ws, [row(0), row(1), row(2)])
    w.wait_for("c2 in the log", lambda: w.query("SELECT 1 FROM customers WHERE key = 'c2@example.com'") != [])
    w.wait_for_runs("two more held send passes", "send", "%template problems hold%", more=2)
    assert "c2@example.com" not in outbox(ws)
    assert w.query("SELECT status FROM sends WHERE customer_key = 'c2@example.com'") == [("queued",)]

    # ... and the fix releases it, as fixed.
    replace_file(tpl / "welcome.txt", "Subject: W-v4 {{ customer.name }}\n\nHello {{ customer.name }}\n")
    w.wait_for("the welcome to c2 after the fix", lambda: "c2@example.com" in outbox(ws))
    assert subjects(ws) == {"c0@example.com": ["W-v1 Customer 0"], "c1@example.com": ["W-v2 Customer 1"],
                            "c2@example.com": ["W-v4 Customer 2"]}
    w.stopped_cleanly()


# ---------------------------------------------------------------- mappings and config.toml


def test_a_running_worker_reloads_the_mappings_and_warns_about_config_toml(tmp_path, running):
    templates = {"welcome.txt": "Subject: Welcome {{ customer.name }}\n\nHi\n",
                 "promo.txt": "Subject: Promo {{ campaign.id }}\n\nOffer\n"}
    cfg = make_workspace(tmp_path / "ws", rows=[row(0), row(1)], campaigns=WELCOME, templates=templates,
                         extra_config=SCHEDULE)
    ws = cfg.parent
    campaigns = ws / "mappings" / "campaigns.toml"
    customers = ws / "mappings" / "customers.toml"
    w = running(cfg)
    w.wait_for("both welcomes", lambda: len(outbox(ws)) == 2)

    # A campaign added under the running worker goes out at the next pass.
    replace_file(campaigns, WELCOME + PROMO.format(id="promo1"))
    w.wait_for("promo1 to both", lambda: all(len(v) == 2 for v in subjects(ws).values()))

    # A broken campaigns.toml fails the send stage with its message; fetch still logs mail.
    replace_file(campaigns, WELCOME + "[[campaign]\n")
    w.wait_for_runs("send passes failed by campaigns.toml", "send", "%campaigns.toml%not valid TOML%")
    deliver(ws, "c0@example.com", "unsubscribe", "unsubscribe")
    w.wait_for("the unsubscribe logged", lambda: w.query(
        "SELECT 1 FROM activities WHERE kind = 'unsubscribe' AND customer_key = 'c0@example.com'") != [])
    replace_file(campaigns, WELCOME + PROMO.format(id="promo1") + PROMO.format(id="promo2"))
    w.wait_for("promo2 after the fix", lambda: len(subjects(ws).get("c1@example.com", [])) == 3)

    # A broken customers.toml fails sync (and holds send); its fix is picked up.
    good_mapping = customers.read_text(encoding="utf-8")
    replace_file(customers, good_mapping.replace('key = "email"', 'key = "emial"'))
    w.wait_for_runs("sync passes failed by customers.toml", "sync", "%customers.toml%emial%")
    write_sheet(ws, [row(0), row(1), row(2)])
    w.wait_for_runs("send passes held by customers.toml", "send", "%customers.toml%emial%")
    assert w.query("SELECT 1 FROM customers WHERE key = 'c2@example.com'") == []
    replace_file(customers, good_mapping)
    w.wait_for("the welcome to c2 after the fix", lambda: "c2@example.com" in outbox(ws))

    # config.toml is not reloaded: a clear warning says a restart is needed.
    replace_file(cfg, cfg.read_text(encoding="utf-8") + "\n# edited\n")
    w.wait_for("the restart warning", lambda: "config.toml changed on disk" in w.output())
    assert "restart it to use the new ones" in w.output()

    assert subjects(ws) == {"c0@example.com": ["Welcome Customer 0", "Promo promo1"],
                            "c1@example.com": ["Welcome Customer 1", "Promo promo1", "Promo promo2"],
                            "c2@example.com": ["Welcome Customer 2"]}
    w.stopped_cleanly()


# ---------------------------------------------------------------- item 10: the worker survives a bad sheet


def test_a_running_worker_survives_a_renamed_header_and_resumes_when_it_is_fixed(tmp_path, running):
    templates = {"welcome.txt": "Subject: Welcome {{ customer.name }}\n\nHi\n",
                 "promo.txt": "Subject: Promo {{ campaign.id }}\n\nOffer\n"}
    cfg = make_workspace(tmp_path / "ws", rows=[row(0), row(1)], campaigns=WELCOME, templates=templates,
                         extra_config=SCHEDULE)
    ws = cfg.parent
    w = running(cfg)
    w.wait_for("both welcomes", lambda: len(outbox(ws)) == 2)

    # Someone renames the Email column.
    write_sheet(ws, [row(0), row(1)], headers=["E-mail", "Name", "Stage", "Owner"])
    w.wait_for_runs("sync passes failed by the renamed header", "sync", '%required column "Email"%not found%')
    # Fetch goes on: an unsubscribe and a reply are logged while the sheet is broken.
    deliver(ws, "c0@example.com", "退订", "退订")
    deliver(ws, "c1@example.com", "Re: Welcome", "Thanks, tell me more.")
    w.wait_for("the unsubscribe and the reply logged", lambda: w.query(
        "SELECT customer_key, kind FROM activities WHERE kind IN ('unsubscribe', 'email_in') ORDER BY kind") == [
        ("c1@example.com", "email_in"), ("c0@example.com", "unsubscribe")])
    # A campaign due now waits with the sheet.
    replace_file(ws / "mappings" / "campaigns.toml", WELCOME + PROMO.format(id="promo"))
    w.wait_for_runs("send passes held by the failed sync", "send", "%the last sync failed%")
    w.wait_for_runs("more held send passes", "send", "%the last sync failed%")
    assert len(outbox(ws)) == 2 and all(len(v) == 1 for v in outbox(ws).values())

    # Fixed: everything resumes; the unsubscribed customer is skipped.
    write_sheet(ws, [row(0), row(1)])
    w.wait_for("the promo to c1", lambda: len(subjects(ws).get("c1@example.com", [])) == 2)
    w.wait_for("c0's promo skipped", lambda: w.query(
        "SELECT status FROM sends WHERE campaign = 'promo' AND customer_key = 'c0@example.com'") == [("skipped",)])
    assert subjects(ws) == {"c0@example.com": ["Welcome Customer 0"],
                            "c1@example.com": ["Welcome Customer 1", "Promo promo"]}
    assert w.query("SELECT COUNT(*) FROM activities WHERE kind = 'customer_removed'") == [(0,)]
    w.stopped_cleanly()
