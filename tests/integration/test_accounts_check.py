"""``check --connect`` and ``status`` with several SMTP accounts (issue #20, part 3): one line per account."""

from __future__ import annotations

import pytest

from crm_automation.app.status import fleet_status
from crm_automation.checks import run_checks
from crm_automation.workspace import Workspace
from tests.integration.test_accounts_send import closed_port, one_pass, people, workspace

pytestmark = pytest.mark.integration


def test_check_connects_to_every_account_and_status_counts_each(tmp_path, smtp_server):
    srv_default = smtp_server()
    cfg = workspace(tmp_path, str(tmp_path / "crm.sqlite"), people(6), (srv_default.host, srv_default.port),
                    ("127.0.0.1", closed_port()))
    report = run_checks(str(cfg), connect=True)
    lines = {c["name"]: c for c in report["checks"] if c["name"].startswith("outbound")}
    assert set(lines) == {"outbound", "outbound account a"}
    assert lines["outbound"]["ok"] and lines["outbound"]["summary"] == "smtp: connected and logged in"
    assert not lines["outbound account a"]["ok"]
    assert "cannot connect" in lines["outbound account a"]["problems"][0]
    assert report["exit"] == 3
    one_pass(cfg)
    status = fleet_status(Workspace.load(cfg))
    uses = {u["account"]: u for u in status.to_json()["accounts"]}  # type: ignore[union-attr]
    assert uses["default"]["last_24h"] == len(srv_default.messages) > 0
    assert uses["a"] == {"account": "a", "last_24h": 0, "max_per_day": 1000, "last_minute": 0, "max_per_minute": 0}
    assert any(line.startswith("account default: ") for line in status.lines())
