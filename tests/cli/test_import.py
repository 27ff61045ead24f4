"""``import``: dry run first, dedupe by key, a report of rejected rows, then the real thing."""

from __future__ import annotations

import csv
import json

from tests.fixtures.core import make_workspace


def test_import_dry_run_then_apply(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", rows=[{"Email": "old@example.com", "Name": "Old", "Stage": "lead",
                                                 "Owner": ""}])
    export = tmp_path / "export.csv"
    export.write_text("Mail,Full name,Stage\nnew@example.com,New One,lead\nOLD@example.com,Old,won\n"
                      "bad@,Bad,lead\nnew@example.com,Again,lead\n", encoding="utf-8")
    args = ["import", str(export), "--map", "Mail=Email", "--map", "Full name=Name", "--config", str(cfg)]
    r = cli(*args, "--dry-run", "--json", "--report", str(tmp_path / "rejects.csv"))
    assert r.code == 1  # one row rejected
    out = json.loads(r.out)
    assert (out["add"], out["update"], out["rejected"], out["duplicates"]) == (1, 1, 1, 1)
    assert "'bad@' is not an address" in out["rejected_rows"][0]
    sheet = (tmp_path / "ws" / "customers.csv").read_text(encoding="utf-8")
    assert "new@example.com" not in sheet  # dry run wrote nothing
    with (tmp_path / "rejects.csv").open(encoding="utf-8-sig") as f:
        rejects = list(csv.DictReader(f))
    assert {r["problem"] for r in rejects} == {"rejected", "duplicate"}
    r = cli(*args)
    assert r.code == 1
    rows = list(csv.DictReader((tmp_path / "ws" / "customers.csv").open(encoding="utf-8")))
    by_email = {r["Email"].lower(): r for r in rows}
    assert by_email["new@example.com"]["Name"] == "New One"
    assert by_email["old@example.com"]["Stage"] == "won"
    assert len(rows) == 2
    # Idempotent: importing again adds nothing.
    r = cli(*args, "--json")
    assert json.loads(r.out)["add"] == 0 and json.loads(r.out)["update"] == 0


def test_import_names_missing_columns(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws")
    export = tmp_path / "export.csv"
    export.write_text("Foo,Bar\n1,2\n", encoding="utf-8")
    r = cli("import", str(export), "--config", str(cfg))
    assert r.code == 2
    assert '"Email" (field email)' in r.err and 'headers are: "Foo", "Bar"' in r.err
    assert cli("import", str(export), "--map", "nonsense", "--config", str(cfg)).code == 2
