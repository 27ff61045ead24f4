"""`preview` of a customer whose address is internationalized (issue #17 item 8): no traceback, headers intact."""

from __future__ import annotations

import json
from email import policy
from email.parser import Parser

from tests.fixtures.core import make_workspace

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\n'
ROWS = [{"Email": "张三@example.cn", "Name": "张三", "Stage": "lead", "Owner": "owner@example.com"},
        {"Email": "alice@例子.中国", "Name": "Alice", "Stage": "lead", "Owner": "owner@example.com"}]


def test_preview_of_internationalized_addresses(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", rows=ROWS, campaigns=CAMPAIGN)
    assert cli("sync", "--config", str(cfg)).code == 0
    r = cli("preview", "hello", "--customer", "张三@example.cn", "--json", "--config", str(cfg))
    assert r.code == 0, r.out + r.err
    msg = Parser(policy=policy.default).parsestr(json.loads(r.out)["eml"])
    assert msg["To"].addresses[0].addr_spec == "张三@example.cn"  # UTF-8 header (RFC 6532), shown as such
    out = tmp_path / "alice.eml"
    r = cli("preview", "hello", "--customer", "alice@例子.中国", "--out", str(out), "--config", str(cfg))
    assert r.code == 0, r.out + r.err
    raw = out.read_bytes()
    assert raw.isascii() and b"<alice@xn--fsqu00a.xn--fiqs8s>" in raw
