"""Config errors name the file, the key, what was found and what was expected — all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from crm_automation.config import load_config, parse_duration, parse_window
from crm_automation.errors import ConfigError

GOOD = """
[sheet]
source = "csv"
path = "c.csv"
[mailbox]
source = "maildir"
path = "inbox"
[outbound]
from = "Sales <sales@example.com>"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_minimal_config_loads_with_defaults_and_resolves_paths(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.database == tmp_path / "var" / "crm.sqlite"
    assert cfg.outbound.max_per_minute == 30
    assert cfg.mailbox.folders == ["INBOX"]
    assert cfg.resolve("c.csv") == tmp_path / "c.csv"


def test_every_problem_is_reported_at_once(tmp_path):
    text = GOOD.replace('source = "csv"', 'source = "xls"').replace('from = "Sales', 'colour = "red"\nfrom = "Sales')
    p = write(tmp_path, text + '[workspace]\ntimezone = "Mars/Olympus"\n[schedule]\nsync_every = "often"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    text = str(ei.value)
    assert "sheet.source is 'xls' (expected 'excel', 'csv' or 'google')" in text
    assert "workspace.timezone" in text and "Mars/Olympus" in text and "IANA" in text
    assert "schedule.sync_every" in text and "'often'" in text
    assert "outbound.colour is not a known key" in text
    assert str(p) in text
    assert len(ei.value.problems) == 4


def test_wrong_type_names_expected_type(tmp_path):
    p = write(tmp_path, GOOD + "max_per_day = \"lots\"\n")
    with pytest.raises(ConfigError, match=r"outbound\.max_per_day is 'lots' \(expected a whole number\)"):
        load_config(p)


def test_missing_required_key(tmp_path):
    p = write(tmp_path, GOOD.replace('from = "Sales <sales@example.com>"', ""))
    with pytest.raises(ConfigError, match=r"outbound\.from is required but missing"):
        load_config(p)


def test_plain_text_refused_off_loopback(tmp_path):
    p = write(tmp_path, GOOD.replace('source = "maildir"\npath = "inbox"',
                                     'source = "imap"\nhost = "imap.example.com"\nsecurity = "none"'))
    with pytest.raises(ConfigError, match="allowed only on loopback or with mailbox.allow_insecure = true"):
        load_config(p)
    ok = write(tmp_path, GOOD.replace('source = "maildir"\npath = "inbox"',
                                      'source = "imap"\nhost = "127.0.0.1"\nsecurity = "none"'))
    assert load_config(ok).mailbox.security == "none"


def test_secrets_are_not_accepted_in_the_file(tmp_path):
    p = write(tmp_path, GOOD.replace('source = "maildir"\npath = "inbox"',
                                     'source = "imap"\nhost = "imap.example.com"\nusername = "u"\npassword = "hunter2"'))
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert "mailbox.password is not a known key" in str(ei.value)
    assert "hunter2" not in str(ei.value)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[sheet\nsource="))


def test_duration_and_window_parsing():
    assert parse_duration("5m").total_seconds() == 300
    assert parse_duration("0m") is None
    assert parse_duration("5 minutes") is None
    assert parse_window("09:00-18:00") == (540, 1080)
    assert parse_window("22:00-06:00") == (1320, 360)
    assert parse_window("9-18") is None
