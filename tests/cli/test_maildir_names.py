"""Maildir file names that are not UTF-8 (issue #17 item 9): logged or quarantined like any other message.

Real Maildirs on disk, the files created with bytes names (os.scandir hands
the undecodable bytes over as surrogate escapes), through the CLI in-process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.fixtures.core import db_rows, make_workspace

GOOD = (b"From: Customer 1 <c1@example.com>\r\nTo: sales@example.com\r\nSubject: Re: Hello\r\n"
        b"Message-ID: <odd-1@example.com>\r\nDate: Sat, 28 Nov 2026 09:00:00 +0800\r\n\r\nYes, please call me.\r\n")
UNREADABLE = "这不是一封邮件。\n".encode() + b"\x89PNG\r\n\x1a\n\x00\x00"


def write_bytes_name(folder: Path, name: bytes, data: bytes) -> None:
    """Create ``folder/name`` with a name that is bytes, as an MTA or a copy from another system may leave it."""
    with open(os.path.join(os.fsencode(folder), name), "wb") as f:
        f.write(data)


def test_a_maildir_file_whose_name_is_not_utf8_is_logged_once(tmp_path, cli):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws)
    new = ws / "inbox" / "new"
    write_bytes_name(new, b"1764291600.M1P1.host\xff\xfe,S=180:2,S", GOOD)
    (new / "1764291601.M2P2.host").write_bytes(GOOD.replace(b"odd-1@", b"odd-2@").replace(b"call me", b"write"))
    r = cli("run", "--once", "--config", str(cfg), "--json")
    assert r.code == 0, r.out + r.err
    assert "Traceback" not in r.err
    db = ws / "var" / "crm.sqlite"
    assert db_rows(db, "SELECT message_id, customer_key FROM activities WHERE kind = 'email_in' ORDER BY id") == [
        ("<odd-1@example.com>", "c1@example.com"), ("<odd-2@example.com>", "c1@example.com")]
    # The cursor holds the name, escaped where it is not UTF-8 (its :2,S flags are not part of it).
    assert sorted(db_rows(db, "SELECT name FROM maildir_seen")) == [
        ("1764291600.M1P1.host\\xff\\xfe,S=180",), ("1764291601.M2P2.host",)]
    # Read again (and after a mail client renamed it with other flags): never logged twice.
    os.rename(os.path.join(os.fsencode(new), b"1764291600.M1P1.host\xff\xfe,S=180:2,S"),
              os.path.join(os.fsencode(ws / "inbox" / "cur"), b"1764291600.M1P1.host\xff\xfe,S=180:2,RS"))
    r = cli("fetch", "--config", str(cfg), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["stages"][0]["stats"]["messages"] == 0
    assert db_rows(db, "SELECT COUNT(*) FROM activities WHERE kind = 'email_in'") == [(2,)]


def test_an_unreadable_message_under_such_a_name_is_quarantined_naming_the_file(tmp_path, cli):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws)
    write_bytes_name(ws / "inbox" / "new", b"1764291600.M9P9.h\xe9te,S=20", UNREADABLE)
    (ws / "inbox" / "new" / "1764291601.M3P3.host").write_bytes(GOOD)
    r = cli("fetch", "--config", str(cfg), "--json")
    assert r.code == 0, r.out + r.err
    db = ws / "var" / "crm.sqlite"
    ((source, raw, error),) = db_rows(db, "SELECT source, raw, error FROM quarantine")
    assert source.endswith("file new/1764291600.M9P9.h\\xe9te,S=20"), source
    assert raw == UNREADABLE
    assert "not an email" in error
    # The message after it in the same batch is logged: one odd name no longer rolls the batch back.
    assert db_rows(db, "SELECT message_id FROM activities WHERE kind = 'email_in'") == [("<odd-1@example.com>",)]
    # The log line names the file in the same readable form (it could not be printed at all before).
    assert "file new/1764291600.M9P9.h\\xe9te,S=20 quarantined" in r.err
    assert json.loads(r.out)["stages"][0]["stats"]["quarantined"] == 1
