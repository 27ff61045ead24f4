"""Issue #17 item 11: ``sync`` counts rejected rows in its "rejected" stat, not bad cells; problems list every cell."""

from __future__ import annotations

import json

from tests.fixtures.core import make_workspace

MAPPING = """key = "email"
[fields]
email = { column = "Email", type = "email", required = true }
name  = { column = "Name", required = true }
joined = { column = "Joined", type = "date", required = true }
owner = { column = "Owner", type = "email", required = true }
"""


def test_sync_counts_rejected_rows_not_bad_cells(tmp_path, cli):
    rows = [{"Email": "a@example.com", "Name": "A", "Joined": "2026-01-02", "Owner": "o@example.com"},
            {"Email": "b@example.com", "Name": "", "Joined": "someday", "Owner": "nobody@"},  # 3 bad cells
            {"Email": "c@example.com", "Name": "C", "Joined": "2026-01-03", "Owner": "o@"},  # 1 bad cell
            {"Email": "a@example.com", "Name": "A2", "Joined": "2026-01-04", "Owner": "o@example.com"}]  # duplicate
    cfg = make_workspace(tmp_path / "ws", rows=rows, mapping=MAPPING)
    for _ in range(2):  # the first sync reads; the second finds the file unchanged and reports its last result
        r = cli("sync", "--config", str(cfg), "--json")
        assert r.code == 1
        (stage,) = json.loads(r.out)["stages"]
        assert stage["stats"]["rejected"] == 3
        assert stage["stats"]["rows"] == 4 and stage["stats"]["rejected"] + 1 == 4
        assert len(stage["problems"]) == 5  # every bad cell is still listed
    r = cli("check", "--config", str(cfg), "--json")
    sheet = next(c for c in json.loads(r.out)["checks"] if c["name"] == "sheet")
    assert r.code == 1 and len(sheet["problems"]) == 5
