"""``check`` validates ``unsubscribe_url`` (issue #17 item 6): only {token} and {email}, balanced braces.

A placeholder the worker does not fill in would reach customers as written,
so it is a configuration error naming the key, the value and what was
expected; ``{email}`` works but puts the address in the link, so ``check``
warns about it without failing.
"""

from __future__ import annotations

import json

import pytest

from crm_automation.config import load_config
from crm_automation.errors import ConfigError
from tests.fixtures.core import make_workspace


@pytest.mark.parametrize(("url", "expected"), [
    ("https://example.com/u/{tokn}", "has the unknown placeholder {tokn}"),
    ("https://example.com/u/{token", "has an unbalanced '{' at character 23"),
    ("https://example.com/u/token}", "has an unbalanced '}' at character 28"),
    ("https://example.com/u/{Token}?e={email}", "has the unknown placeholder {Token}"),
])
def test_unsubscribe_url_with_a_wrong_placeholder_is_a_config_error(tmp_path, url, expected):
    cfg = make_workspace(tmp_path / "ws", outbound=f'transport = "outbox"\nunsubscribe_url = "{url}"')
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    (line,) = e.value.problems
    assert line.startswith(f"{cfg}: outbound.unsubscribe_url {url!r} {expected}")
    assert "expected only {token} and {email}" in line


def test_check_names_a_wrong_placeholder_and_exits_2(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", outbound='transport = "outbox"\nunsubscribe_url = "https://x.example/u/{id}"')
    r = cli("check", "--config", str(cfg))
    assert r.code == 2
    assert "outbound.unsubscribe_url 'https://x.example/u/{id}' has the unknown placeholder {id}" in r.out + r.err
    assert "Traceback" not in r.out + r.err


def test_check_warns_that_email_puts_the_address_in_the_link(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws",
                         outbound='transport = "outbox"\nunsubscribe_url = "https://x.example/u/{token}?e={email}"')
    r = cli("check", "--config", str(cfg))
    assert r.code == 0, r.out + r.err
    warning = next(line for line in r.out.splitlines() if "warning:" in line)
    assert "outbound.unsubscribe_url" in warning and "{email}" in warning and "address" in warning
    report = json.loads(cli("check", "--config", str(cfg), "--json").out)
    assert report["exit"] == 0
    notes = report["checks"][0]["notes"]
    assert len(notes) == 1 and notes[0].startswith("warning:")
    # Without {email}: no warning.
    cfg.write_text(cfg.read_text(encoding="utf-8").replace("?e={email}", ""), encoding="utf-8")
    assert "warning:" not in cli("check", "--config", str(cfg)).out


