"""Issue #17 item 11: usage errors under ``--json`` print a JSON error object (exit 2), and an interrupted
``run --once``, ``send`` or ``fetch`` exits 128 + the signal's number (130 SIGINT, 143 SIGTERM) so cron can tell;
tested with a real process and a real signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.fixtures.core import REPO, db_rows, make_workspace, run_subprocess

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'


# -- usage errors under --json ---------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "kinds", "text"), [
    (("--json", "frobnicate"), {"UsageError", "NoSuchCommand"}, "No such command 'frobnicate'"),  # click 8.1 / 8.2
    (("send", "--limit", "zero", "--json"), {"BadParameter"}, "'zero' is not a valid integer"),
    (("--json", "send", "--now", "yesterday"), {"BadParameter"}, "'yesterday' is not a date and time"),
    (("report", "--jsonn", "--json"), {"NoSuchOption"}, "--jsonn"),
    (("timeline", "--json"), {"MissingParameter"}, "Missing argument 'KEY'"),
])
def test_usage_errors_under_json_print_a_json_error_and_exit_2(cli, args, kinds, text):
    r = cli(*args)
    assert r.code == 2
    out = json.loads(r.out)
    assert out["ok"] is False and out["exit"] == 2 and out["kind"] in kinds
    assert text in out["error"]
    assert "--help" in out["hint"]
    assert text in r.err  # the person at the terminal still reads click's message


def test_usage_errors_without_json_print_no_json(cli):
    r = cli("send", "--limit", "zero")
    assert r.code == 2 and r.out == "" and "'zero' is not a valid integer" in r.err


# -- interrupted runs exit non-zero ----------------------------------------------------------------------


def _popen(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "crm_automation", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(pred, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize(("verb", "sig", "code"), [(("run", "--once"), signal.SIGTERM, 143),
                                                   (("run", "--once"), signal.SIGINT, 130),
                                                   (("send",), signal.SIGTERM, 143)])
def test_an_interrupted_pass_exits_128_plus_the_signal(tmp_path, verb, sig, code):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    cfg.write_text(cfg.read_text().replace("max_per_minute = 0", "max_per_minute = 1"))
    ws = tmp_path / "ws"
    if verb == ("send",):
        assert run_subprocess("sync", "--config", str(cfg)).code == 0
    p = _popen(*verb, "--config", str(cfg), "--json")
    try:
        # One message goes, then the pass waits a minute for the next: it is mid-pass when the signal comes.
        assert _wait_for(lambda: len(list((ws / "var" / "outbox").glob("*.eml"))) == 1)
        time.sleep(0.3)
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == code, err
    assert json.loads(out)["interrupted"] == sig.name and json.loads(out)["exit"] == code
    assert "Traceback" not in err
    assert db_rows(ws / "var" / "crm.sqlite", "SELECT status, COUNT(*) FROM sends GROUP BY status") == [
        ("queued", 2), ("sent", 1)]


def test_an_interrupted_fetch_exits_143_and_a_complete_one_0(tmp_path):
    cfg = make_workspace(tmp_path / "ws")
    inbox = tmp_path / "ws" / "inbox" / "new"
    for i in range(3000):
        (inbox / f"{i}.m").write_bytes(f"From: x{i}@example.org\r\nSubject: {i}\r\nMessage-ID: <{i}@e>\r\n\r\nhi\r\n"
                                       .encode())
    p = _popen("fetch", "--config", str(cfg))
    try:
        assert _wait_for(lambda: (tmp_path / "ws" / "var" / "crm.sqlite").exists())  # the handlers are in place
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    assert run_subprocess("fetch", "--config", str(cfg)).code == 0  # the rest is fetched by the next run
    assert db_rows(tmp_path / "ws" / "var" / "crm.sqlite", "SELECT COUNT(*) FROM activities WHERE kind = 'email_in'"
                   ) == [(3000,)]
