"""``app.customers.search`` (issue #18): the web app's search box, over the log's customers as the sheet gave them."""

from __future__ import annotations

import json

import pytest

from crm_automation.app import customers
from crm_automation.errors import ConfigError
from crm_automation.workspace import Workspace
from tests.fixtures.core import make_workspace
from tests.fixtures.postgres import database_value

ROWS = [
    {"Email": "li.lei@example.cn", "Name": "李雷", "Stage": "意向", "Owner": "sales@example.com"},
    {"Email": "han.meimei@example.cn", "Name": "韩梅梅", "Stage": "报价", "Owner": "sales@example.com"},
    {"Email": "bob@example.com", "Name": "Bob Smith", "Stage": "100%_sure", "Owner": ""},
    {"Email": "alice@example.com", "Name": "Alice Name", "Stage": "lead", "Owner": ""},
]


@pytest.fixture
def ws(tmp_path, cli, log_location) -> Workspace:
    cfg = make_workspace(tmp_path / "ws", rows=ROWS, database=database_value(log_location))
    assert cli("sync", "--config", str(cfg)).code == 0
    return Workspace.load(cfg)


def keys(result: customers.CustomerSearch) -> list[str]:
    return [c.key for c in result.customers]


def test_search_matches_any_value_in_any_case_and_in_chinese(ws):
    assert keys(customers.search(ws, "smith")) == ["bob@example.com"]
    assert keys(customers.search(ws, "梅")) == ["han.meimei@example.cn"]
    assert keys(customers.search(ws, "报价")) == ["han.meimei@example.cn"]
    assert keys(customers.search(ws, "EXAMPLE.CN")) == ["han.meimei@example.cn", "li.lei@example.cn"]


def test_search_matches_values_not_the_field_names_or_the_json(ws):
    assert keys(customers.search(ws, "name")) == ["alice@example.com"]  # "Alice Name", not the field "name"
    assert keys(customers.search(ws, '"')) == []
    assert keys(customers.search(ws, "stage")) == []


def test_search_takes_percent_and_underscore_literally(ws):
    assert keys(customers.search(ws, "%_")) == ["bob@example.com"]
    assert keys(customers.search(ws, "_")) == ["bob@example.com"]
    assert keys(customers.search(ws, "%")) == ["bob@example.com"]


def test_search_stops_at_the_limit_and_says_there_is_more(ws):
    everyone = customers.search(ws, "")
    assert len(everyone.customers) == 4 and not everyone.more
    first = customers.search(ws, "example", limit=3)
    assert len(first.customers) == 3 and first.more
    assert keys(first) == keys(everyone)[:3]
    with pytest.raises(ConfigError, match="limit 0"):
        customers.search(ws, "x", limit=0)


def test_search_puts_customers_still_in_the_sheet_first(ws, cli, tmp_path):
    path = tmp_path / "ws" / "customers.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(line for line in lines if not line.startswith("alice@")) + "\n", encoding="utf-8")
    assert cli("sync", "--config", str(ws.cfg.path)).code == 0
    found = customers.search(ws, "")
    assert [(c.key, c.present) for c in found.customers] == [
        ("bob@example.com", True), ("han.meimei@example.cn", True), ("li.lei@example.cn", True),
        ("alice@example.com", False)]


def test_search_result_is_plain_json(ws):
    data = json.loads(json.dumps(customers.search(ws, "李").to_json(), ensure_ascii=False))
    assert data["query"] == "李" and data["more"] is False
    (hit,) = data["customers"]
    assert hit["key"] == "li.lei@example.cn" and hit["row"] == 2 and hit["present"] is True
    assert hit["fields"] == {"email": "li.lei@example.cn", "name": "李雷", "stage": "意向",
                             "owner": "sales@example.com"}
    assert hit["email_status"] == "ok" and hit["first_seen"].endswith("Z")


TYPED_MAPPING = """key = "email"
[fields]
email = { column = "Email", type = "email", required = true }
name  = { column = "Name", required = true }
size  = { column = "Size", type = "number" }
vip   = { column = "VIP", type = "bool" }
[writeback]
last_sent = "Last sent"
last_reply = "Last reply"
email_status = "Email status"
"""


@pytest.fixture
def typed_ws(tmp_path, cli) -> Workspace:
    rows = [{"Email": "q@example.com", "Name": 'Bob "the builder" C:\\work', "Size": "250", "VIP": "yes"},
            {"Email": "p@example.com", "Name": "王伟", "Size": "", "VIP": "no"}]
    cfg = make_workspace(tmp_path / "ws", rows=rows, mapping=TYPED_MAPPING)
    assert cli("sync", "--config", str(cfg)).code == 0
    return Workspace.load(cfg)


def test_search_finds_what_the_json_text_writes_escaped_and_numbers_and_booleans(typed_ws):
    """The first test on the JSON text (issue #19) must never drop a match: quotes and backslashes are escaped
    there, numbers and booleans are not text."""
    assert keys(customers.search(typed_ws, '"the builder"')) == ["q@example.com"]
    assert keys(customers.search(typed_ws, "c:\\work")) == ["q@example.com"]
    assert keys(customers.search(typed_ws, "250")) == ["q@example.com"]
    data = customers.search(typed_ws, "q@").customers[0].fields
    assert data["vip"] is True  # stored as JSON true, which SQLite reads as 1
    assert keys(customers.search(typed_ws, "1")) == ["q@example.com"]
    assert keys(customers.search(typed_ws, "王")) == ["p@example.com"]
    assert keys(customers.search(typed_ws, "伟x")) == []
