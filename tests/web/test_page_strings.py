"""Every UI string the team pages use exists in English and in Chinese (issue #19 item 10).

A key missing from a catalog shows as English or as the key itself
(web/i18n.py): visible, but wrong for the team. This reads the templates and
web/pages.py for the keys they name, and the log's vocabularies (statuses,
kinds, reasons) the pages label, so a new string or enum value without its
translation fails here instead of in front of the team.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import crm_automation.web
from crm_automation.models import EmailStatus, Kind, SendStatus, SuppressionReason
from crm_automation.web import i18n

WEB = Path(crm_automation.web.__file__).parent
PAGES = ("dashboard", "attention", "customers", "customer", "health", "error", "_flash", "pipeline")


def _keys() -> set[str]:
    keys: set[str] = set()
    for name in PAGES:
        text = (WEB / "templates" / f"{name}.html").read_text(encoding="utf-8")
        keys |= set(re.findall(r"""\bt\(["']([a-z_]+)["']\)""", text))
    code = (WEB / "pages.py").read_text(encoding="utf-8")
    keys |= set(re.findall(r"""\bt\("([a-z_]+)"\)""", code))
    keys |= {f"flash_{k}" for k in re.findall(r"""_flash\(request, "([a-z_]+)\"""", code)}
    keys |= {f"{p}{v.value}" for p, e in (("status_", SendStatus), ("kind_", Kind), ("email_status_", EmailStatus),
                                          ("reason_", SuppressionReason)) for v in e}
    keys |= {f"col_{c}" for c in ("campaign", "step", "queued", "sending", "sent", "failed", "uncertain", "skipped",
                                  "bounced", "replied", "unsubscribed", "reply_rate", "clicked")}
    keys |= {f"stage_{j}" for j in ("sync", "fetch", "send", "writeback", "recover")}
    return keys


def test_the_pages_name_some_strings():
    assert {"nav_attention", "requeue", "flash_requeued", "kind_email_in", "col_reply_rate"} <= _keys()


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
def test_every_string_the_pages_use_is_in_both_catalogs(lang):
    catalog = i18n.CATALOGS[lang]
    missing = sorted(k for k in _keys() if k not in catalog and not (lang == "zh-CN" and k == "app_name"))
    assert missing == []


def test_chinese_strings_are_chinese():
    same = sorted(k for k in _keys() if k in i18n.ZH and i18n.ZH[k] == i18n.EN.get(k))
    assert same == []
