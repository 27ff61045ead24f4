"""A changed key is never a new customer (issue #17, item 3), through the real CLI and a real SMTP server.

The admin's story: a run mails the welcome campaign; the admin changes the
mapping's key from the email to a ``customer_id`` column; the next sync
refuses and names ``rekey``; ``rekey`` moves the log; later runs mail nobody
again, and editing a row afterwards is a field change, not "removed + added".
"""

from __future__ import annotations

import csv
import sqlite3
from collections import Counter
from pathlib import Path

from tests.fixtures.core import CSV_MAPPING, db_rows, make_workspace

CAMPAIGN = ('[[campaign]]\nid = "welcome"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n')
ID_MAPPING = CSV_MAPPING.replace('key = "email"', 'key = "customer_id"').replace(
    "[fields]\n", '[fields]\ncustomer_id = { column = "ID", required = true }\n')


def rows(n: int = 3) -> list[dict[str, str]]:
    return [{"ID": f"C{i:03d}", "Email": f"c{i}@example.com", "Name": f"Customer {i}", "Stage": "lead",
             "Owner": "owner@example.com"} for i in range(n)]


def write_sheet(cfg: Path, data: list[dict[str, str]]) -> None:
    with (cfg.parent / "customers.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(data[0]))
        w.writeheader()
        w.writerows(data)


def workspace(tmp_path: Path, smtpd) -> Path:
    outbound = (f'transport = "smtp"\nhost = "{smtpd.host}"\nport = {smtpd.port}\nsecurity = "none"\n'
                'timeout = 10')
    return make_workspace(tmp_path / "ws", rows=rows(), campaigns=CAMPAIGN, outbound=outbound)


def received(smtpd) -> Counter[str]:
    return Counter(m.rcpt_tos[0] for m in smtpd.messages)


def test_changed_key_is_refused_then_rekeyed_and_nobody_is_mailed_again(tmp_path, cli, smtpd):
    cfg = workspace(tmp_path, smtpd)
    db = cfg.parent / "var" / "crm.sqlite"
    r = cli("run", "--once", "--config", str(cfg))
    assert r.code == 0, r.err
    assert received(smtpd) == {f"c{i}@example.com": 1 for i in range(3)}

    # The admin moves the key to the customer_id column.
    (cfg.parent / "mappings" / "customers.toml").write_text(ID_MAPPING, encoding="utf-8")
    r = cli("run", "--once", "--config", str(cfg))
    assert r.code == 2, r.out + r.err
    assert 'key = "customer_id"' in r.err and 'keyed by "email"' in r.err and "crm-automation rekey" in r.err
    assert "send: FAILED" in r.out and "Traceback" not in r.err
    assert len(smtpd.messages) == 3
    assert db_rows(db, "SELECT key FROM customers WHERE present = 1 ORDER BY key") == [
        (f"c{i}@example.com",) for i in range(3)]  # nobody removed, nobody added
    assert db_rows(db, "SELECT COUNT(*) FROM activities WHERE kind IN ('customer_added', 'customer_removed')") == [
        (3,)]
    # `send` alone is held too, with the same reason.
    r = cli("send", "--config", str(cfg))
    assert r.code == 2 and "crm-automation rekey" in r.err and len(smtpd.messages) == 3
    # A dry run shows the same hold, and writes nothing (it opens the log read-only).
    r = cli("send", "--dry-run", "--config", str(cfg))
    assert r.code == 2 and "crm-automation rekey" in r.err, r.out + r.err
    # And `check` finds it before any run does.
    r = cli("check", "--config", str(cfg))
    assert r.code == 2 and "crm-automation rekey" in r.out

    before = db_rows(db, "SELECT key, data FROM customers ORDER BY key")
    r = cli("rekey", "--dry-run", "--config", str(cfg))
    assert r.code == 0, r.err
    assert "would re-key 3 customer(s) from email to customer_id" in r.out
    assert "row 2: c0@example.com -> C000" in r.out
    assert db_rows(db, "SELECT key, data FROM customers ORDER BY key") == before

    r = cli("rekey", "--config", str(cfg))
    assert r.code == 0, r.err
    assert "re-keyed 3 customer(s)" in r.out
    assert db_rows(db, "SELECT customer_key, status FROM sends ORDER BY customer_key") == [
        ("C000", "sent"), ("C001", "sent"), ("C002", "sent")]
    assert db_rows(db, "SELECT COUNT(*) FROM activities WHERE customer_key LIKE '%@%'") == [(0,)]

    for _ in range(2):
        r = cli("run", "--once", "--config", str(cfg))
        assert r.code == 0, r.err
        assert "added 0" in r.out and "removed 0" in r.out
    assert len(smtpd.messages) == 3

    # Editing a row afterwards is a field change of that customer, not a new one.
    data = rows()
    data[1]["Name"] = "Customer One (renamed)"
    data.append({"ID": "C100", "Email": "new@example.com", "Name": "New", "Stage": "lead",
                 "Owner": "owner@example.com"})
    write_sheet(cfg, data)
    r = cli("run", "--once", "--config", str(cfg))
    assert r.code == 0, r.err
    assert "added 1" in r.out and "changed 1" in r.out and "removed 0" in r.out
    assert received(smtpd) == {**{f"c{i}@example.com": 1 for i in range(3)}, "new@example.com": 1}
    assert db_rows(db, "SELECT customer_key FROM activities WHERE kind = 'field_changed'") == [("C001",)]


def test_rekey_with_conflicts_changes_nothing_and_lists_every_problem(tmp_path, cli, smtpd):
    cfg = workspace(tmp_path, smtpd)
    db = cfg.parent / "var" / "crm.sqlite"
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    (cfg.parent / "mappings" / "customers.toml").write_text(ID_MAPPING, encoding="utf-8")
    data = rows(3)
    data[1]["ID"] = "C000"  # two customers, one new key
    data[2]["ID"] = ""  # no new key
    write_sheet(cfg, [*data, {"ID": "C009", "Email": "c0@example.com", "Name": "dup", "Stage": "lead",
                              "Owner": ""}])  # one customer, two rows
    tables = ("customers", "activities", "sends", "quarantine", "meta")
    before = {t: db_rows(db, f"SELECT * FROM {t} ORDER BY 1") for t in tables}
    for args in (("rekey", "--dry-run"), ("rekey",)):
        r = cli(*args, "--config", str(cfg))
        assert r.code == 2, r.out + r.err
        assert "3 configuration problems" in r.err and "Traceback" not in r.err
        assert "rows 2 and 3: customers 'c0@example.com' and 'c1@example.com' would both get customer_id 'C000'" \
            in r.err
        assert "row 4, \"ID\" is empty: customer 'c2@example.com' would have no customer_id" in r.err
        assert "rows 2 and 5: both are customer 'c0@example.com'" in r.err
        assert "nothing was changed" in r.err
        assert {t: db_rows(db, f"SELECT * FROM {t} ORDER BY 1") for t in tables} == before


def test_rekey_when_the_key_did_not_change_has_nothing_to_do(tmp_path, cli, smtpd):
    cfg = workspace(tmp_path, smtpd)
    assert cli("sync", "--config", str(cfg)).code == 0
    r = cli("rekey", "--config", str(cfg))
    assert r.code == 0 and "nothing to re-key" in r.out


def test_a_log_from_before_the_key_was_recorded_notices_a_key_changed_in_the_same_upgrade(tmp_path, cli, smtpd):
    cfg = workspace(tmp_path, smtpd)
    db = cfg.parent / "var" / "crm.sqlite"
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    con = sqlite3.connect(db)
    with con:
        con.execute("DELETE FROM meta WHERE key = 'customer_key_field'")  # as a log written before issue #17
    con.close()
    (cfg.parent / "mappings" / "customers.toml").write_text(ID_MAPPING, encoding="utf-8")
    r = cli("run", "--once", "--config", str(cfg))
    assert r.code == 2 and 'keyed by "email"' in r.err
    assert len(smtpd.messages) == 3
