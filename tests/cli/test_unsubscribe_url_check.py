"""``check`` validates ``unsubscribe_url`` (issue #17 item 6): only {token}, balanced braces.

A placeholder the worker does not fill in would reach customers as written,
so it is a configuration error naming the key, the value and what was
expected. ``{email}`` used to work with a warning; issue #19 refuses it with
its reason (it puts the address in the link, where proxy logs and forwards
keep it). A URL without ``{token}`` still works, with a warning.
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
    assert "expected only {token}, e.g." in line


def test_check_names_a_wrong_placeholder_and_exits_2(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", outbound='transport = "outbox"\nunsubscribe_url = "https://x.example/u/{id}"')
    r = cli("check", "--config", str(cfg))
    assert r.code == 2
    assert "outbound.unsubscribe_url 'https://x.example/u/{id}' has the unknown placeholder {id}" in r.out + r.err
    assert "Traceback" not in r.out + r.err


@pytest.mark.parametrize("url", ["https://x.example/u/{token}?e={email}", "https://x.example/u/{email}"])
def test_email_in_the_url_is_a_config_error_with_the_reason(tmp_path, url):
    cfg = make_workspace(tmp_path / "ws", outbound=f'transport = "outbox"\nunsubscribe_url = "{url}"')
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    (line,) = e.value.problems
    assert line.startswith(f"{cfg}: outbound.unsubscribe_url {url!r} has {{email}}, which puts the customer's "
                           "address in the link")
    assert "proxy logs" in line and "forwarded" in line and "expected only {token}" in line


def test_check_refuses_email_in_the_url_and_exits_2(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws",
                         outbound='transport = "outbox"\nunsubscribe_url = "https://x.example/u/{token}?e={email}"')
    r = cli("check", "--config", str(cfg))
    assert r.code == 2, r.out + r.err
    assert "outbound.unsubscribe_url" in r.out + r.err and "{email}" in r.out + r.err
    assert "Traceback" not in r.out + r.err
    report = json.loads(cli("check", "--config", str(cfg), "--json").out)
    assert report["exit"] == 2
    (problem,) = report["checks"][0]["problems"]
    assert "{email}, which puts the customer's address in the link" in problem
    # Without {email}: it loads, and check passes without a warning.
    cfg.write_text(cfg.read_text(encoding="utf-8").replace("?e={email}", ""), encoding="utf-8")
    r = cli("check", "--config", str(cfg))
    assert r.code == 0, r.out + r.err
    assert "warning:" not in r.out


def test_check_still_warns_about_a_url_without_token(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", outbound='transport = "outbox"\nunsubscribe_url = "https://x.example/u"')
    r = cli("check", "--config", str(cfg))
    assert r.code == 0, r.out + r.err
    warning = next(line for line in r.out.splitlines() if "warning:" in line)
    assert "has no {token}" in warning
