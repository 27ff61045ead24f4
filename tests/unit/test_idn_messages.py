"""Internationalized addresses in the messages we build (issue #17 item 8, RFC 6530-6532).

The bytes are checked as a receiving server would read them: ASCII with
A-labels where an ASCII form exists, UTF-8 headers (RFC 6532) only for a
local part that has none. These cases used to raise UnicodeEncodeError.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email import policy
from email.parser import Parser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from crm_automation.addresses import WireAddress, wire_address
from crm_automation.compose import Composer
from crm_automation.config import load_config
from crm_automation.errors import DataError
from crm_automation.models import CustomerView
from crm_automation.templating import Rendered, Templates, build_message

NOW = datetime(2027, 1, 10, 2, 0, tzinfo=UTC)
R = Rendered(subject="你好", text="正文\n", html=None, reply_to=None)


def parsed(raw: bytes):
    return Parser(policy=policy.default).parsestr(raw.decode("utf-8"))


@pytest.mark.parametrize(("address", "wire"), [
    ("bob@example.net", WireAddress("bob@example.net", False)),
    ("alice@例子.中国", WireAddress("alice@xn--fsqu00a.xn--fiqs8s", False)),
    ("alice@ＥＸＡＭＰＬＥ.cn", WireAddress("alice@example.cn", False)),  # UTS #46 maps full-width letters
    ("张三@example.cn", WireAddress("张三@example.cn", True)),
    ("张三@例子.中国", WireAddress("张三@xn--fsqu00a.xn--fiqs8s", True)),
])
def test_wire_address_writes_the_domain_as_a_labels_and_says_when_smtputf8_is_needed(address, wire):
    assert wire_address(address) == wire


@pytest.mark.parametrize("address", ["alice@例子..中国", "alice@例 子.中国"])
def test_an_invalid_idn_domain_is_a_data_error_naming_it(address):
    with pytest.raises(DataError, match="internationalized domain"):
        wire_address(address)


def test_an_idn_domain_is_written_as_a_labels_and_the_message_stays_ascii():
    raw = build_message(R, sender="销售部 <sales@例子.中国>", to_name="Alice", to_email="alice@例子.中国",
                        message_id="<1@xn--fsqu00a.xn--fiqs8s>", now=NOW, reply_to="help@例子.中国")
    assert raw.isascii()
    msg = parsed(raw)
    assert msg["To"].addresses[0].addr_spec == "alice@xn--fsqu00a.xn--fiqs8s"
    assert msg["From"].addresses[0].addr_spec == "sales@xn--fsqu00a.xn--fiqs8s"
    assert msg["From"].addresses[0].display_name == "销售部"
    assert msg["Reply-To"].addresses[0].addr_spec == "help@xn--fsqu00a.xn--fiqs8s"


def test_a_non_ascii_local_part_is_carried_as_utf8_in_the_header():
    raw = build_message(R, sender="Sales <sales@example.com>", to_name="张三", to_email="张三@example.cn",
                        message_id="<1@example.com>", now=NOW)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert "To: =?utf-8?b?5byg5LiJ?= <张三@example.cn>".encode() in head  # name encoded, address UTF-8
    msg = parsed(raw)
    assert msg["To"].addresses[0].addr_spec == "张三@example.cn"
    assert msg["To"].addresses[0].display_name == "张三"
    assert str(msg["Subject"]) == "你好"
    assert msg.get_body(("plain",)).get_content() == "正文\n"


def test_a_lone_surrogate_in_a_header_is_a_data_error_not_a_crash():
    with pytest.raises(DataError, match="cannot be written"):
        build_message(R, sender="Sales <sales@example.com>", to_name=None, to_email="\udce5x@example.cn",
                      message_id="<1@example.com>", now=NOW)


def test_the_composer_keeps_message_id_and_list_unsubscribe_ascii(tmp_path: Path):
    (tmp_path / "config.toml").write_text(
        '[sheet]\nsource = "csv"\npath = "c.csv"\n\n[mailbox]\nsource = "maildir"\npath = "inbox"\n\n'
        '[outbound]\ntransport = "outbox"\nfrom = "销售部 <sales@例子.中国>"\nunsubscribe_mailto = "退订@例子.中国"\n',
        encoding="utf-8")
    (tmp_path / "t.txt").write_text("Subject: 你好 {{ customer.name }}\n\n{{ unsubscribe }}\n", encoding="utf-8")
    cfg = load_config(tmp_path / "config.toml")
    composer = Composer(cfg, Templates(tmp_path, ZoneInfo("Asia/Shanghai")))
    mid = composer.message_id()
    assert mid.endswith("@xn--fsqu00a.xn--fiqs8s>")
    view = CustomerView("k", "alice@例子.中国", {"name": "Alice"}, NOW, None)
    composed = composer.campaign_email("t", view, "promo", 0, mid, NOW)
    assert composed.data.isascii()
    msg = parsed(composed.data)
    token = mid.strip("<>").partition("@")[0]  # the send's token rides in the subject (item 6)
    assert str(msg["List-Unsubscribe"]) == (
        f"<mailto:%E9%80%80%E8%AE%A2@xn--fsqu00a.xn--fiqs8s?subject=unsubscribe%20{token}>")
    assert msg["To"].addresses[0].addr_spec == "alice@xn--fsqu00a.xn--fiqs8s"
