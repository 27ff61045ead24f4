"""GoogleSource against the fake Sheets API: request budget, retries, and what the user is told."""

from __future__ import annotations

import json

import pytest

from crm_automation.config import load_config
from crm_automation.errors import ConfigError, ServiceError
from crm_automation.sheets.google import GoogleSource, spreadsheet_key

ROWS = [["邮箱", "客户名称"]] + [[f"u{i}@x.com", f"客户{i}"] for i in range(500)]


def test_429_then_success_backs_off_exponentially(fake_sheets):
    fake_sheets.create("K", {"客户": ROWS})
    slept = []
    src = fake_sheets.source("K", sleep=slept.append)
    src.read()
    fake_sheets.fail(429, times=2, op="values.get")
    data = src.read()
    assert len(data.rows) == 500
    assert slept == [1.0, 2.0]


def test_persistent_503_is_a_service_error_naming_the_status(fake_sheets):
    fake_sheets.create("K", {"客户": ROWS})
    slept = []
    src = fake_sheets.source("K", sleep=slept.append, max_retries=3)
    fake_sheets.fail(503, times=10)
    with pytest.raises(ServiceError, match=r"failed with HTTP 503 after 4 attempts"):
        src.read()
    assert slept == [1.0, 2.0, 4.0]
    assert fake_sheets.count() == 4


def test_persistent_429_hints_at_the_quota(fake_sheets):
    fake_sheets.create("K", {"客户": ROWS})
    src = fake_sheets.source("K", max_retries=1)
    fake_sheets.fail(429, times=5)
    with pytest.raises(ServiceError) as e:
        src.read()
    assert "HTTP 429" in str(e.value)
    assert "60 requests a minute" in (e.value.hint or "")


def test_500_during_write_is_retried_and_written_once(fake_sheets):
    fake_sheets.create("K", {"客户": ROWS})
    src = fake_sheets.source("K")
    data = src.read()
    fake_sheets.fail(500, times=1, op="values.batchUpdate")
    res = src.write_back("邮箱", {"u7@x.com": {"状态": "ok"}}, version=data.version)
    assert res.cells == 1
    assert fake_sheets.grid("K")[8][2] == "ok"


def test_403_is_not_retried_and_says_whom_to_share_with(fake_sheets):
    fake_sheets.create("K", {"客户": ROWS})
    slept = []
    src = fake_sheets.source("K", sleep=slept.append)
    src.read()
    fake_sheets.fail(403, times=1)
    with pytest.raises(ServiceError, match="HTTP 403") as e:
        src.read()
    assert slept == []
    assert "crm-bot@test-project.iam.gserviceaccount.com" in (e.value.hint or "")


def test_request_budget_per_cycle_whatever_the_row_count(fake_sheets):
    fake_sheets.create("K", {"客户": ROWS, "其他": [["x"]]})
    src = fake_sheets.source("K", worksheet="客户")
    data = src.read()
    assert fake_sheets.count("spreadsheets.get") == 1  # opening, once
    assert fake_sheets.count("values.get") == 1
    fake_sheets.reset_log()
    updates = {f"u{i}@x.com": {"最近发送": "2026-11-24", "邮件状态": "ok"} for i in range(0, 500, 2)}
    res = src.write_back("邮箱", updates, version=data.version)
    assert res.cells == 500
    assert res.added_columns == ("最近发送", "邮件状态")
    assert fake_sheets.count() == 2
    assert fake_sheets.count("values.get") == 1
    assert fake_sheets.count("values.batchUpdate") == 1
    body = next(r.body for r in fake_sheets.log if r.op == "values.batchUpdate")
    assert body["valueInputOption"] == "RAW"
    fake_sheets.reset_log()
    src.read()
    src.write_back("邮箱", updates, version="")  # nothing changed: a read, no write
    assert [r.op for r in fake_sheets.log] == ["values.get", "values.get"]


def test_token_is_fetched_once_and_sent_as_bearer(fake_sheets):
    fake_sheets.create("K", {"客户": ROWS})
    src = fake_sheets.source("K")
    for _ in range(3):
        src.read()
    tokens = [r for r in fake_sheets.log if r.op == "token"]
    assert len(tokens) == 1
    assert tokens[0].body["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]


def test_from_config_takes_a_url_and_uses_the_default_adapter(fake_sheets, tmp_path):
    fake_sheets.create("1AbC-d_9", {"Sheet1": [["邮箱"], ["a@x.com"]]})
    cfg = tmp_path / "config.toml"
    cfg.write_text(fake_sheets.config_lines("https://docs.google.com/spreadsheets/d/1AbC-d_9/edit#gid=0")
                   + '[mailbox]\nsource = "maildir"\npath = "inbox"\n[outbound]\nfrom = "s@x.com"\n',
                   encoding="utf-8")
    src = GoogleSource.from_config(load_config(cfg))
    assert src.read().rows[0].values == {"邮箱": "a@x.com"}


def test_spreadsheet_key_from_url_or_key():
    assert spreadsheet_key("https://docs.google.com/spreadsheets/d/1AbC-d_9/edit#gid=0") == "1AbC-d_9"
    assert spreadsheet_key(" 1AbC-d_9 ") == "1AbC-d_9"


def test_missing_or_broken_credentials_file_is_a_config_error(fake_sheets, tmp_path):
    fake_sheets.create("K", {"客户": ROWS})
    with pytest.raises(ConfigError, match="service-account file not found"):
        GoogleSource("K", tmp_path / "nope.json").read()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "service_account"}), encoding="utf-8")
    with pytest.raises(ConfigError, match="not a service-account JSON key file"):
        GoogleSource("K", bad).read()


def test_renamed_worksheet_is_looked_up_again(fake_sheets):
    ss = fake_sheets.create("K", {"客户": ROWS})
    src = fake_sheets.source("K")  # the first worksheet, whatever its name
    src.read()
    ss.sheets = {"客户2026": ss.sheets["客户"]}  # someone renames the tab
    with pytest.raises(ServiceError, match="HTTP 400"):
        src.read()
    assert len(src.read().rows) == 500
    assert fake_sheets.count("spreadsheets.get") == 2


def test_append_rows_adds_header_then_appends_raw(fake_sheets):
    fake_sheets.create("K", {"客户": [["邮箱", "客户名称"], ["a@x.com", "A"], [], []]})
    src = fake_sheets.source("K")
    src.read()
    fake_sheets.reset_log()
    assert src.append_rows([{"邮箱": "n@x.com", "来源": "=IMPORTXML()"}]) == 1
    assert [r.op for r in fake_sheets.log] == ["values.get", "values.batchUpdate", "values.append"]
    append = fake_sheets.log[-1]
    assert append.params["valueInputOption"] == ["RAW"]
    assert fake_sheets.grid("K") == [["邮箱", "客户名称", "来源"], ["a@x.com", "A"], ["n@x.com", "", "=IMPORTXML()"]]


def test_append_is_retried_after_429_but_not_after_500(fake_sheets):
    fake_sheets.create("K", {"客户": [["邮箱"], ["a@x.com"]]})
    src = fake_sheets.source("K")
    fake_sheets.fail(429, times=1, op="values.append")
    assert src.append_rows([{"邮箱": "b@x.com"}]) == 1
    fake_sheets.fail(500, times=1, op="values.append")
    with pytest.raises(ServiceError, match="not retried"):
        src.append_rows([{"邮箱": "c@x.com"}])
    assert [r[0] for r in fake_sheets.grid("K")] == ["邮箱", "a@x.com", "b@x.com"]
