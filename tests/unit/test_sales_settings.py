"""Issue #21's settings: ``[digest]`` in config.toml and ``[stale_after_days]`` in mappings/customers.toml.

Each mistake is one ConfigError line naming the file, the key, the value and what was expected.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crm_automation.config import load_config
from crm_automation.errors import ConfigError
from crm_automation.mapping import load_mapping
from tests.fixtures.core import CSV_MAPPING

BASE = """[sheet]
source = "csv"
path = "c.csv"
[mailbox]
source = "maildir"
path = "inbox"
[outbound]
from = "Sales <sales@example.com>"
"""


def _config(tmp_path: Path, digest: str):
    p = tmp_path / "config.toml"
    p.write_text(BASE + digest, encoding="utf-8")
    return load_config(p)


def test_without_a_digest_section_there_are_no_digests_but_working_time_has_defaults(tmp_path):
    cfg = _config(tmp_path, "")
    assert cfg.digest is None
    w = cfg.working
    assert (w.at, w.weekdays, w.template, w.answer_within_hours, w.working_hours) == (
        "08:30", ["mon", "tue", "wed", "thu", "fri"], "digest", 8.0, "09:00-18:00")
    assert w.weekday_numbers == frozenset(range(5)) and w.working_window == (540, 1080)


def test_a_digest_section_is_read(tmp_path):
    cfg = _config(tmp_path, '[digest]\nat = "07:45"\nweekdays = ["Mon", "sat"]\ntemplate = "morning"\n'
                            'answer_within_hours = 4\nworking_hours = "08:30-17:30"\n')
    assert cfg.digest is not None and cfg.working is cfg.digest
    assert (cfg.digest.minute_of_day, cfg.digest.weekday_numbers, cfg.digest.template) == (
        465, frozenset({0, 5}), "morning")
    assert cfg.digest.answer_within_hours == 4 and cfg.digest.working_window == (510, 1050)
    assert _config(tmp_path, "[digest]\n").digest is not None  # an empty [digest]: digests with the defaults


@pytest.mark.parametrize(("line", "expected"), [
    ('at = "8.30"', "digest.at '8.30' is not a time of day (expected \"HH:MM\""),
    ('at = "25:00"', "digest.at '25:00' is not a time of day"),
    ('weekdays = ["mon", "monday"]', "digest.weekdays 'monday' is not a day of the week (expected some of \"mon\""),
    ("weekdays = []", "digest.weekdays is empty (expected at least one day of the week"),
    ('weekdays = ["mon", "Mon"]', "names a day twice"),
    ('weekdays = "mon"', "digest.weekdays is 'mon' (expected a list"),
    ('template = "../x"', "digest.template '../x' is not a template name"),
    ("answer_within_hours = 0", "digest.answer_within_hours is 0.0 (expected working hours, more than 0"),
    ('answer_within_hours = "8"', "digest.answer_within_hours is '8' (expected a number)"),
    ('working_hours = "18:00-09:00"', "digest.working_hours '18:00-09:00' is not a working day"),
    ('send_at = "08:30"', "digest.send_at is not a known key"),
])
def test_a_wrong_digest_setting_names_file_key_value_and_what_was_expected(tmp_path, line, expected):
    with pytest.raises(ConfigError) as ei:
        _config(tmp_path, f"[digest]\n{line}\n")
    (msg,) = ei.value.problems
    assert msg.startswith(f"{tmp_path / 'config.toml'}: digest.")
    assert expected in msg


def _mapping(tmp_path: Path, text: str):
    (tmp_path / "customers.toml").write_text(text, encoding="utf-8")
    return load_mapping(tmp_path)


def test_stale_after_days_is_read_per_stage_value(tmp_path):
    m = _mapping(tmp_path, CSV_MAPPING + '[stale_after_days]\n"报价" = 7\n"意向" = 14\nnot_in_the_sheet_yet = 3\n')
    assert m.stale_after_days == {"报价": 7, "意向": 14, "not_in_the_sheet_yet": 3}
    assert _mapping(tmp_path, CSV_MAPPING).stale_after_days == {}


@pytest.mark.parametrize("value", ['"7"', "0", "-3", "7.5", "true", "[7]"])
def test_a_stale_limit_that_is_not_a_whole_number_of_days_is_refused(tmp_path, value):
    with pytest.raises(ConfigError) as ei:
        _mapping(tmp_path, CSV_MAPPING + f"[stale_after_days]\n\"报价\" = {value}\n")
    (msg,) = ei.value.problems
    assert msg.startswith(f"{tmp_path / 'customers.toml'}: stale_after_days.报价 = ")
    assert "is not a number of days (expected a whole number, 1 or more" in msg


def test_stale_after_days_without_a_stage_field_is_refused(tmp_path):
    mapping = CSV_MAPPING.replace('stage = { column = "Stage" }\n', "")
    with pytest.raises(ConfigError) as ei:
        _mapping(tmp_path, mapping + "[stale_after_days]\nlead = 7\n")
    (msg,) = ei.value.problems
    assert "customers.toml: [stale_after_days] needs a stage field" in msg and "[roles] stage" in msg
    assert _mapping(tmp_path, mapping).stale_after_days == {}  # without the table, no stage field is fine


def test_stale_after_days_follows_the_stage_role(tmp_path):
    mapping = CSV_MAPPING.replace("stage = {", "phase = {").replace(
        'column = "Stage" }', 'column = "Phase", type = "choice", choices = ["lead", "won"] }')
    m = _mapping(tmp_path, mapping + '[roles]\nstage = "phase"\n[stale_after_days]\nlead = 5\n')
    assert m.stale_after_days == {"lead": 5}
    with pytest.raises(ConfigError, match=r"stale_after_days\.lost: 'lost' is not one of the choices of the stage "
                                          r"field phase \(expected one of \"lead\", \"won\"\)"):
        _mapping(tmp_path, mapping + '[roles]\nstage = "phase"\n[stale_after_days]\nlost = 5\n')


def test_last_contact_and_days_quiet_are_writeback_columns(tmp_path):
    m = _mapping(tmp_path, CSV_MAPPING + 'last_contact = "Last contact"\ndays_quiet = "Days quiet"\n')
    assert (m.writeback["last_contact"], m.writeback["days_quiet"]) == ("Last contact", "Days quiet")


def test_an_unquoted_chinese_stage_gets_a_hint_to_quote_it(tmp_path):
    """TOML 1.0 (tomllib) refuses non-ASCII bare keys; the issue's own example ``报价 = 7`` is one."""
    with pytest.raises(ConfigError) as ei:
        _mapping(tmp_path, CSV_MAPPING + "[stale_after_days]\n报价 = 7\n")
    assert "not valid TOML" in str(ei.value)
    assert "'报价': a key with Chinese or other non-ASCII letters must be in quotes, e.g. \"报价\" = ..." in str(
        ei.value)
