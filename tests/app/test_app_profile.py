"""``app.customers.profile`` (issue #19): the customer page's one read — the customer, the timeline, the suppression."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from crm_automation.app import customers, reports, suppressions
from crm_automation.errors import ConfigError
from crm_automation.workspace import Workspace
from tests.fixtures.core import make_workspace
from tests.fixtures.postgres import database_value

ROWS = [
    {"Email": "Li.Lei@Example.cn", "Name": "李雷", "Stage": "意向", "Owner": "sales@example.com"},
    {"Email": "bob@example.com", "Name": "Bob", "Stage": "lead", "Owner": ""},
]
NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


@pytest.fixture
def ws(tmp_path, cli, log_location) -> Workspace:
    cfg = make_workspace(tmp_path / "ws", rows=ROWS, database=database_value(log_location))
    assert cli("sync", "--config", str(cfg)).code == 0
    return Workspace.load(cfg)


def test_profile_is_the_customer_the_timeline_and_no_suppression(ws):
    p = customers.profile(ws, "li.lei@example.cn")
    assert p.customer is not None and p.customer.fields["name"] == "李雷"
    assert p.email == "li.lei@example.cn"
    assert p.suppressed is None
    assert p.timeline == reports.timeline(ws, "li.lei@example.cn")  # what `timeline` prints, the same value
    data = json.loads(json.dumps(p.to_json()))
    assert data["customer"]["key"] == "li.lei@example.cn"
    assert [a["kind"] for a in data["timeline"]["activities"]] == ["customer_added"]


def test_profile_says_why_the_address_is_suppressed_and_follows_unsuppress(ws):
    suppressions.suppress(ws, ["bob@example.com"], "manual", NOW, source="web")
    assert customers.profile(ws, "bob@example.com").suppressed == "manual"
    suppressions.unsuppress(ws, ["bob@example.com"])
    assert customers.profile(ws, "BOB@example.com").suppressed is None


def test_an_unknown_key_is_the_users_mistake(ws):
    with pytest.raises(ConfigError, match="'nobody@example.com' is not in the log"):
        customers.profile(ws, "nobody@example.com")
