"""Issue #17 item 11: config values are validated where they are read, naming file, key, value and expectation.

Ports 1-65535, timeouts more than 0 (and finite), ``password_env`` a variable's NAME (a secret typed in its place is
refused and never repeated), bounds of other numbers, and a UTF-8 byte order mark in config.toml.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from crm_automation.config import load_config, looks_like_secret
from crm_automation.errors import ConfigError

BASE = """
[sheet]
source = "csv"
path = "c.csv"
[mailbox]
source = "maildir"
path = "inbox"
[outbound]
from = "Sales <sales@example.com>"
"""

IMAP = """
[sheet]
source = "csv"
path = "c.csv"
[mailbox]
source = "imap"
host = "imap.example.com"
username = "sales@example.com"
{mailbox}
[outbound]
from = "Sales <sales@example.com>"
transport = "smtp"
host = "smtp.example.com"
username = "sales@example.com"
password_env = "CRM_SMTP_PASSWORD"
{outbound}
"""


def write(tmp_path: Path, text: str, *, bom: bool = False) -> Path:
    p = tmp_path / "config.toml"
    p.write_bytes((codecs.BOM_UTF8 if bom else b"") + text.encode("utf-8"))
    return p


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    return ei.value.problems


# -- ports and timeouts -----------------------------------------------------------------------------


@pytest.mark.parametrize("port", [0, -1, 65536, 99999])
@pytest.mark.parametrize("section", ["mailbox", "outbound"])
def test_a_port_outside_1_to_65535_names_file_key_value_and_range(tmp_path, section, port):
    cfg = IMAP.format(mailbox='password_env = "CRM_IMAP_PASSWORD"' + (f"\nport = {port}" if section == "mailbox"
                                                                     else ""),
                      outbound=f"port = {port}" if section == "outbound" else "")
    p = write(tmp_path, cfg)
    (msg,) = problems(p)
    assert msg.startswith(f"{p}: {section}.port is {port}, not a TCP port")
    assert "1 to 65535" in msg


@pytest.mark.parametrize("port", [1, 993, 65535])
def test_ports_in_range_load(tmp_path, port):
    p = write(tmp_path, IMAP.format(mailbox=f'password_env = "CRM_IMAP_PASSWORD"\nport = {port}', outbound=""))
    assert load_config(p).mailbox.port == port


@pytest.mark.parametrize("value", ["0", "-5", "0.0", "nan", "inf", "1e12"])
@pytest.mark.parametrize("section", ["mailbox", "outbound"])
def test_a_timeout_that_is_not_more_than_zero_or_is_endless_is_refused(tmp_path, section, value):
    # 0 made the socket non-blocking, a negative one raised ValueError and 1e12 OverflowError, at connect time.
    cfg = IMAP.format(mailbox='password_env = "CRM_IMAP_PASSWORD"' + (f"\ntimeout = {value}" if section == "mailbox"
                                                                     else ""),
                      outbound=f"timeout = {value}" if section == "outbound" else "")
    p = write(tmp_path, cfg)
    (msg,) = problems(p)
    assert msg.startswith(f"{p}: {section}.timeout is ")
    assert "more than 0" in msg


def test_a_sensible_timeout_loads(tmp_path):
    p = write(tmp_path, IMAP.format(mailbox='password_env = "CRM_IMAP_PASSWORD"\ntimeout = 2.5', outbound="timeout = 60"))
    cfg = load_config(p)
    assert (cfg.mailbox.timeout, cfg.outbound.timeout) == (2.5, 60)


def test_bounds_of_other_numbers_say_what_is_expected(tmp_path):
    p = write(tmp_path, BASE.replace('path = "inbox"', 'path = "inbox"\nbatch_size = 0'))
    (msg,) = problems(p)
    assert msg == f"{p}: mailbox.batch_size is 0 (expected a number at least 1)"


# -- password_env ---------------------------------------------------------------------------------

SECRETS = ["hunter2!", "my secret pass", "p@ssw0rd", "Xk9fQ2mZ7pLw3Rt8", "3f9a0c5e2b7d1a4f9e8d",
           "ghp_aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5", "s3cr3t-v4lue", "2FA_CODE"]


@pytest.mark.parametrize("secret", SECRETS)
def test_a_password_in_place_of_the_variable_name_is_refused_without_echoing_it(tmp_path, secret):
    p = write(tmp_path, IMAP.format(mailbox=f'password_env = "{secret}"', outbound=""))
    (msg,) = problems(p)
    assert msg.startswith(f"{p}: mailbox.password_env is not the name of an environment variable")
    assert "not shown" in msg
    assert secret not in msg
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert secret not in str(ei.value) and secret not in repr(ei.value.__dict__)


@pytest.mark.parametrize("raw", ["12345678", "true", "[\"a\"]"])
def test_a_password_env_of_the_wrong_type_is_not_echoed_either(tmp_path, raw):
    p = write(tmp_path, IMAP.format(mailbox=f"password_env = {raw}", outbound=""))
    (msg,) = problems(p)
    assert "mailbox.password_env is not the name of an environment variable" in msg
    assert "12345678" not in msg and "True" not in msg


@pytest.mark.parametrize("name", ["CRM_IMAP_PASSWORD", "SMTP_PASS2", "imapPassword", "_X", "MYCOMPANYSMTPPASSWORD2",
                                  "CRM_SMTP_PASSWORD_2024", "camelCaseVariableName"])
def test_ordinary_variable_names_are_accepted(tmp_path, name):
    assert not looks_like_secret(name)
    p = write(tmp_path, IMAP.format(mailbox=f'password_env = "{name}"', outbound=""))
    assert load_config(p).mailbox.password_env == name


@pytest.mark.parametrize("key", ["password", "token", "secret"])
def test_a_secret_key_in_the_file_says_where_secrets_go_without_the_value(tmp_path, key):
    p = write(tmp_path, IMAP.format(mailbox=f'password_env = "X"\n{key} = "hunter2"', outbound=""))
    (msg,) = problems(p)
    assert f"mailbox.{key} is not a known key: secrets never go in the config file" in msg
    assert "password_env" in msg and "hunter2" not in msg


# -- byte order marks -------------------------------------------------------------------------------


def test_config_with_a_utf8_bom_loads(tmp_path):
    # Notepad saves one; tomllib refused it ("Invalid statement (at line 1, column 1)").
    cfg = load_config(write(tmp_path, BASE + '[workspace]\ntimezone = "Asia/Shanghai"\n', bom=True))
    assert cfg.timezone.key == "Asia/Shanghai"
