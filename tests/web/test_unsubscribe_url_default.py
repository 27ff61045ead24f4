"""``[serve] public_url`` gives the one-click link its default (issue #19): ``{public_url}/u/{token}``."""

from __future__ import annotations

from email import message_from_bytes, policy

from crm_automation.config import load_config
from crm_automation.tokens import token_of
from tests.fixtures.core import make_workspace

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'


def _sent(cfg):
    msgs = [message_from_bytes(p.read_bytes(), policy=policy.default)
            for p in sorted((cfg.parent / "var" / "outbox").rglob("*.eml"))]
    assert msgs
    return msgs


def test_a_sent_message_carries_the_serve_link_and_one_click_post(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN,
                         extra_config='\n[serve]\npublic_url = "https://crm.example.com/"\n')
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    for m in _sent(cfg):
        token = token_of(m["Message-ID"])
        assert f"<https://crm.example.com/u/{token}>" in m["List-Unsubscribe"]
        assert m["List-Unsubscribe"].startswith("<mailto:")
        assert m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_an_explicit_unsubscribe_url_wins_and_without_public_url_there_is_none(tmp_path, cli):
    cfg = make_workspace(tmp_path / "a", campaigns=CAMPAIGN,
                         outbound='transport = "outbox"\noutbox = "var/outbox"\n'
                                  'unsubscribe_url = "https://elsewhere.example/unsub/{token}"',
                         extra_config='\n[serve]\npublic_url = "https://crm.example.com"\n')
    assert load_config(cfg).outbound.unsubscribe_url == "https://elsewhere.example/unsub/{token}"
    plain = make_workspace(tmp_path / "b", campaigns=CAMPAIGN)
    assert load_config(plain).outbound.unsubscribe_url is None
    assert cli("run", "--once", "--config", str(plain), "--now", "2026-11-27T10:00").code == 0
    for m in _sent(plain):
        assert "https://" not in m["List-Unsubscribe"] and m["List-Unsubscribe-Post"] is None
