"""``app.quarantine.message``: a quarantined message whole, for the attention page's download (issue #19)."""

from __future__ import annotations

import json

from crm_automation.app import quarantine, reports
from crm_automation.workspace import Workspace
from tests.fixtures.core import make_workspace

NOT_MAIL = b"\x00\x01 this is not an email at all\r\n\xff\xfe binary tail\r\n"


def test_a_message_the_fetch_pass_quarantined_comes_back_byte_for_byte(tmp_path, cli, fixed_now):
    cfg = make_workspace(tmp_path / "ws")
    (tmp_path / "ws" / "inbox" / "new" / "1700000000.M1P1.host").write_bytes(NOT_MAIL)
    r = cli("fetch", "--config", str(cfg), "--now", "2026-11-27T10:00")
    assert r.code in (0, 1), r.err
    ws = Workspace.load(cfg)
    (listed,) = reports.attention(ws, fixed_now).quarantine
    got = quarantine.message(ws, listed.id)
    assert got is not None
    assert got.raw == NOT_MAIL
    assert (got.id, got.source, got.error) == (listed.id, listed.source, listed.error)
    assert got.filename == f"quarantine-{listed.id}.eml"
    data = json.loads(json.dumps(got.to_json()))
    assert data["size"] == len(NOT_MAIL) and "raw" not in data


def test_an_unknown_id_is_none_and_a_missing_log_is_empty(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws")
    ws = Workspace.load(cfg)
    assert quarantine.message(ws, 1) is None  # no log yet: read-only never creates it
    assert not ws.cfg.database.exists()
    assert cli("sync", "--config", str(cfg)).code == 0
    assert quarantine.message(ws, 999) is None
