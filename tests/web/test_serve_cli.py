"""``crm-automation serve`` (issue #19): what it says when it cannot start, and ``--hash-password``."""

from __future__ import annotations

import socket

from click.testing import CliRunner

from crm_automation.cli import cli as click_cli
from crm_automation.errors import ConfigError
from crm_automation.web.auth import verify_password
from tests.fixtures.core import make_workspace


def test_a_missing_secret_is_a_config_error_before_listening(tmp_path, cli, monkeypatch):
    cfg = make_workspace(tmp_path / "ws", extra_config='\n[serve]\nsecret_env = "CRM_TEST_NO_SUCH_SECRET"\n')
    monkeypatch.delenv("CRM_TEST_NO_SUCH_SECRET", raising=False)
    r = cli("serve", "--config", str(cfg), "--port", "1")
    assert r.code == 2
    assert "serve.secret_env: the environment variable CRM_TEST_NO_SUCH_SECRET is not set" in r.err
    assert "hint:" in r.err and "Traceback" not in r.err


def test_a_short_secret_and_a_missing_admin_password_are_config_errors(tmp_path, cli, monkeypatch):
    cfg = make_workspace(tmp_path / "ws", extra_config='\n[serve]\nadmin_password_env = "CRM_TEST_NO_ADMIN"\n')
    monkeypatch.setenv("CRM_SERVE_SECRET", "short")
    r = cli("serve", "--config", str(cfg))
    assert r.code == 2 and "holds 5 characters (expected at least 16" in r.err
    assert "'short'" not in r.err  # the value is never shown
    monkeypatch.setenv("CRM_SERVE_SECRET", "x" * 32)
    monkeypatch.delenv("CRM_TEST_NO_ADMIN", raising=False)
    r = cli("serve", "--config", str(cfg))
    assert r.code == 2 and "serve.admin_password_env: the environment variable CRM_TEST_NO_ADMIN" in r.err


def test_a_port_in_use_is_named_with_what_to_do(tmp_path, cli, monkeypatch):
    cfg = make_workspace(tmp_path / "ws")
    monkeypatch.setenv("CRM_SERVE_SECRET", "x" * 32)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        r = cli("serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port))
    finally:
        taken.close()
    assert r.code == 2
    assert f"serve: port {port} on 127.0.0.1 is already in use" in r.err
    assert "--port" in r.err and "Traceback" not in r.err


def test_a_password_hash_in_config_must_look_like_one(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", extra_config='\n[serve]\nusers = { sales = "hunter2hunter2" }\n')
    r = cli("check", "--config", str(cfg))
    assert r.code == 2
    text = r.out + r.err
    assert "serve.users" in text and "user 'sales': not a password hash" in text
    assert "hunter2" not in text  # it may be the password itself


def test_hash_password_asks_twice_and_prints_a_hash_that_verifies():
    runner = CliRunner()
    r = runner.invoke(click_cli, ["serve", "--hash-password"], input="a long password\na long password\n")
    assert r.exit_code == 0, r.output
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("scrypt$") and verify_password("a long password", line)
    r = runner.invoke(click_cli, ["serve", "--hash-password"], input="a long password\nanother one\n"
                                                                      "a long password\na long password\n")
    assert r.exit_code == 0 and "match" in r.output.lower()  # click's "the two entered values do not match"
    assert verify_password("a long password", r.stdout.strip().splitlines()[-1])
    r = runner.invoke(click_cli, ["serve", "--hash-password"], input="short\nshort\n")
    assert isinstance(r.exception, ConfigError) and "expected at least 10" in str(r.exception)  # main(): exit 2
