"""Issue #17 item 11: mappings accept a UTF-8 byte order mark, and phone regions are ones phonenumbers knows."""

from __future__ import annotations

import codecs
from zoneinfo import ZoneInfo

import pytest

from crm_automation.errors import ConfigError
from crm_automation.mapping import load_campaigns, load_mapping

MAPPING = """key = "email"
[fields]
email = { column = "邮箱", type = "email", required = true }
phone = { column = "电话", type = "phone", region = "%s" }
"""


def test_mappings_with_a_utf8_bom_load(tmp_path):
    (tmp_path / "customers.toml").write_bytes(codecs.BOM_UTF8 + (MAPPING % "CN").encode("utf-8"))
    (tmp_path / "campaigns.toml").write_bytes(
        codecs.BOM_UTF8 + b'[[campaign]]\nid = "welcome"\ntemplate = "welcome"\ntrigger = "new"\n')
    m = load_mapping(tmp_path)
    assert m.fields["email"].column == "邮箱"
    assert [c.id for c in load_campaigns(tmp_path, m, ZoneInfo("Asia/Shanghai"))] == ["welcome"]


# -- phone regions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("region", ["XX", "UK", "China", "86", "C N", ""])
def test_a_phone_region_phonenumbers_does_not_know_is_refused_at_load(tmp_path, region):
    (tmp_path / "customers.toml").write_text(MAPPING % region, encoding="utf-8")
    with pytest.raises(ConfigError) as ei:
        load_mapping(tmp_path)
    (msg,) = ei.value.problems
    assert msg.startswith(f"{tmp_path / 'customers.toml'}: fields.phone.region is {region!r}, not a region")
    assert "ISO 3166" in msg
    if region == "UK":
        assert '"GB"' in msg


@pytest.mark.parametrize("region", ["CN", "cn", "HK", "TW", "US", "GB"])
def test_known_phone_regions_load(tmp_path, region):
    (tmp_path / "customers.toml").write_text(MAPPING % region, encoding="utf-8")
    assert load_mapping(tmp_path).fields["phone"].region == region


def test_the_region_check_answers_as_phonenumbers_does_without_importing_it():
    """Every two-letter code: known exactly when phonenumbers supports it (the check reads its data folder)."""
    import itertools
    import string

    import phonenumbers

    from crm_automation.mapping import _known_region

    for a, b in itertools.product(string.ascii_uppercase, repeat=2):
        assert _known_region(a + b) is (a + b in phonenumbers.SUPPORTED_REGIONS), a + b
    assert _known_region("cn") and not _known_region("001") and not _known_region("区域")
