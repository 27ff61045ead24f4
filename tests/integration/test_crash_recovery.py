"""After a crash mid-send: a send left in ``sending`` is found in the Sent folder over IMAP, or reported uncertain.

Real Dovecot (the mailbox and its Sent folder) and a real aiosmtpd server; the
crash is reproduced by leaving rows in ``sending`` exactly as a killed worker does.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.integration.test_send_kill import cli, customers, sends, write_workspace

pytestmark = pytest.mark.integration


def test_sending_rows_are_resolved_from_the_sent_folder_or_marked_uncertain(tmp_path, smtpd, imap_account,
                                                                          monkeypatch):
    imap = 'sent_folder = "Sent"\n'
    cfg = write_workspace(tmp_path, smtpd, customers(3), outbound=imap)
    text = cfg.read_text(encoding="utf-8").replace(
        '[mailbox]\nsource = "maildir"\npath = "inbox"\n',
        f'[mailbox]\nsource = "imap"\nhost = "{imap_account.server.host}"\nport = {imap_account.server.port}\n'
        f'security = "none"\nusername = "{imap_account.user}"\npassword_env = "TEST_IMAP_PASSWORD"\n')
    cfg.write_text(text, encoding="utf-8")
    monkeypatch.setenv("TEST_IMAP_PASSWORD", imap_account.password)
    assert cli(cfg, "sync").returncode == 0
    assert cli(cfg, "send").returncode == 0
    rows = sends(cfg)
    assert [r["status"] for r in rows] == ["sent"] * 3
    # Make two of them look as a worker killed mid-send leaves them.
    con = sqlite3.connect(cfg.parent / "var" / "crm.sqlite")
    con.execute("UPDATE sends SET status = 'sending', sent_at = NULL WHERE id IN (?, ?)",
                (rows[0]["id"], rows[1]["id"]))
    con.commit()
    con.close()
    # A worker killed mid-pass never recorded these as sent in the workspace's log marker (issue #9).
    (cfg.parent / ".config.log-id.json").unlink()
    # The first one's copy is in the Sent folder (the provider saved it); the second's is not.
    found = next(m for m in smtpd.messages if m.message_id == rows[0]["message_id"])
    imap_account.append([found.raw], folder="Sent")
    r = cli(cfg, "send")
    assert r.returncode == 1, r.stdout + r.stderr  # an uncertain send is a problem to report
    after = {s["id"]: s for s in sends(cfg)}
    assert after[rows[0]["id"]]["status"] == "sent"
    assert after[rows[1]["id"]]["status"] == "uncertain"
    assert len(smtpd.messages) == 3  # nothing was sent again
    rep = json.loads(cli(cfg, "report", "--json").stdout)
    assert [a["id"] for a in rep["attention"]] == [rows[1]["id"]]
    # The admin decides to send it again.
    assert cli(cfg, "requeue", "--id", str(rows[1]["id"])).returncode == 0
    assert cli(cfg, "send").returncode == 0
    assert len(smtpd.messages) == 4
    assert {s["status"] for s in sends(cfg)} == {"sent"}
