"""``crm-automation serve`` as an admin runs it: a real process, its log, SIGTERM (issue #19 item 3).

Tokens in URLs are secrets of a kind and client addresses are personal data:
at the default level the log has neither, uvicorn's access log is off; at
``-v`` there is one line per request, with the token cut out and no address.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from crm_automation.tokens import token_of
from tests.fixtures.core import db_rows, make_workspace

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'


@pytest.fixture
def sent(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    (m,) = db_rows(cfg.parent / "var" / "crm.sqlite", "SELECT message_id FROM sends WHERE customer_key = 'c1@example.com'")
    return cfg, token_of(m[0])


def _serve(cfg, *extra: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "CRM_SERVE_SECRET": "x" * 32}
    p = subprocess.Popen([sys.executable, "-m", "crm_automation", "serve", "--config", str(cfg), "--port", "0", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert p.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        if m := re.search(r"serving .* on (http://127\.0\.0\.1:\d+)", line):
            return p, m.group(1)
        if not line and p.poll() is not None:
            break
    p.kill()
    raise AssertionError(f"serve did not start: {p.communicate()}")


def _stop(p: subprocess.Popen) -> tuple[int, str]:
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    return p.returncode, err


def _traffic(url: str, token: str) -> None:
    assert httpx.get(f"{url}/u/{token}").status_code == 200
    assert httpx.post(f"{url}/u/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert httpx.get(f"{url}/healthz").status_code in {200, 503}


def test_the_default_log_has_no_tokens_no_addresses_and_no_access_lines(sent):
    cfg, token = sent
    p, url = _serve(cfg)
    _traffic(url, token)
    code, err = _stop(p)
    assert code == 0, err
    assert token not in err and "127.0.0.1:" not in err.replace(url, "")
    assert "/u/" not in err and "GET" not in err and "POST" not in err
    assert "Traceback" not in err


def test_verbose_logs_one_line_per_request_without_the_token(sent):
    cfg, token = sent
    p, url = _serve(cfg, "-v")
    _traffic(url, token)
    code, err = _stop(p)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if re.search(r" (GET|POST) /", ln)]
    assert [re.sub(r" [\d.]+ ms$", "", ln.split(" ", 2)[2]) for ln in lines] == [
        "GET /u/… 200", "POST /u/… 200", f"GET /healthz {lines[2].split()[4]}"]
    assert token not in err
    assert not re.search(r"127\.0\.0\.1:\d+ -", err)  # no uvicorn access-log lines (client address and port)
