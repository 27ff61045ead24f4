"""Issue #21 item 5: ``timeline`` shows a customer's moves between stages as such ("stage: 意向 -> 报价")."""

from __future__ import annotations

from tests.fixtures.core import CSV_MAPPING, make_workspace

ROWS = [{"Email": "c0@example.com", "Name": "Customer 0", "Stage": "意向", "Owner": "owner@example.com"}]


def _move(ws, old: str, new: str) -> None:
    path = ws / "customers.csv"
    path.write_text(path.read_text(encoding="utf-8").replace(f",{old},", f",{new},"), encoding="utf-8")


def test_timeline_shows_stage_changes(tmp_path, cli):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws, rows=ROWS)
    assert cli("sync", "--config", str(cfg), "--now", "2026-11-02T10:00").code == 0
    _move(ws, "意向", "报价")
    assert cli("sync", "--config", str(cfg), "--now", "2026-11-03T10:00").code == 0
    _move(ws, "报价", "")
    assert cli("sync", "--config", str(cfg), "--now", "2026-11-04T10:00").code == 0
    r = cli("timeline", "c0@example.com", "--config", str(cfg))
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert any(line.startswith("2026-11-03 10:00") and line.endswith("field_changed   stage: 意向 -> 报价")
               for line in lines), r.out
    assert any(line.endswith("stage: 报价 -> (empty)") for line in lines), r.out


def test_a_stage_field_by_another_name_is_labelled_as_the_stage(tmp_path, cli):
    ws = tmp_path / "ws"
    mapping = CSV_MAPPING.replace("stage = {", "phase = {") + '[roles]\nstage = "phase"\n'
    cfg = make_workspace(ws, rows=ROWS, mapping=mapping)
    assert cli("sync", "--config", str(cfg), "--now", "2026-11-02T10:00").code == 0
    _move(ws, "意向", "报价")
    assert cli("sync", "--config", str(cfg), "--now", "2026-11-03T10:00").code == 0
    r = cli("timeline", "c0@example.com", "--config", str(cfg))
    assert "stage (phase): 意向 -> 报价" in r.out, r.out
    # another field's change keeps its exact form
    path = ws / "customers.csv"
    path.write_text(path.read_text(encoding="utf-8").replace("Customer 0", "Customer Zero"), encoding="utf-8")
    assert cli("sync", "--config", str(cfg), "--now", "2026-11-04T10:00").code == 0
    assert "name: 'Customer 0' -> 'Customer Zero'" in cli("timeline", "c0@example.com", "--config", str(cfg)).out
