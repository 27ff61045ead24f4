"""The sheet's status words and dates per language, and the config/mapping keys that choose them (issue #12)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from crm_automation.config import load_config
from crm_automation.errors import ConfigError
from crm_automation.mapping import load_mapping
from crm_automation.status_words import LANGUAGES, status_words

CONFIG = """
[workspace]
timezone = "Asia/Shanghai"
{language}
[sheet]
source = "csv"
path = "c.csv"
[mailbox]
source = "maildir"
path = "inbox"
[outbound]
from = "Sales <sales@example.com>"
"""

MAPPING = """key = "email"
[fields]
email = { column = "邮箱", type = "email", required = true }
[writeback]
email_status = "邮件状态"
"""

SHANGHAI = ZoneInfo("Asia/Shanghai")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_words_and_dates_per_language():
    t = datetime(2026, 11, 27, 1, 5, tzinfo=UTC)  # 09:05 in Shanghai
    zh = status_words("zh-CN")
    assert [zh.status(s) for s in ("ok", "bounced", "unsubscribed")] == ["正常", "退信", "已退订"]
    assert zh.time(t, SHANGHAI) == "2026年11月27日 09:05"
    en = status_words("en")
    assert [en.status(s) for s in ("ok", "bounced", "unsubscribed")] == ["ok", "bounced", "unsubscribed"]
    assert en.time(t, SHANGHAI) == "2026-11-27 09:05"
    assert status_words(None) == en  # unset: English
    assert zh.time(None, SHANGHAI) == "" and zh.status("something-new") == "something-new"


@pytest.mark.parametrize("language", LANGUAGES)
def test_dates_sort_as_text_in_time_order(language):
    words = status_words(language)
    times = [datetime(2026, m, d, h, tzinfo=UTC) for m, d, h in ((1, 2, 3), (9, 30, 23), (10, 1, 0), (12, 31, 9))]
    texts = [words.time(t, SHANGHAI) for t in times]
    assert sorted(texts) == texts


def test_workspace_language_defaults_to_english_and_accepts_zh_cn(tmp_path):
    assert load_config(write(tmp_path / "a" / "config.toml", CONFIG.format(language=""))).language == "en"
    cfg = load_config(write(tmp_path / "b" / "config.toml", CONFIG.format(language='language = "zh-CN"')))
    assert cfg.language == "zh-CN"


def test_unknown_workspace_language_is_refused_naming_file_key_value_and_expected(tmp_path):
    p = write(tmp_path / "config.toml", CONFIG.format(language='language = "fr"'))
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert str(ei.value) == (f"{p}: workspace.language is 'fr', not a supported language (expected \"en\" or "
                             f"\"zh-CN\": the language of the words and dates written into the sheet)")


def test_writeback_language_overrides_the_workspace_and_is_not_a_column(tmp_path):
    m = load_mapping(write(tmp_path / "m" / "customers.toml", MAPPING + 'language = "zh-CN"\n').parent)
    assert m.writeback == {"email_status": "邮件状态"} and m.writeback_language == "zh-CN"
    m = load_mapping(write(tmp_path / "n" / "customers.toml", MAPPING).parent)
    assert m.writeback_language is None  # the workspace's


def test_unknown_writeback_language_is_refused(tmp_path):
    p = write(tmp_path / "customers.toml", MAPPING + 'language = "zh-TW"\n')
    with pytest.raises(ConfigError) as ei:
        load_mapping(p.parent)
    assert str(ei.value) == (f"{p}: writeback.language is 'zh-TW', not a supported language (expected \"en\" or "
                             f"\"zh-CN\", or leave it out to use [workspace] language)")
