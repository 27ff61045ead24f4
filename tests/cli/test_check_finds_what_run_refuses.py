"""Issue #17 item 11: ``check`` finds what ``run`` would refuse, without connecting and without writing.

- the logins' secrets: variables named by ``password_env`` set and not empty, ``oauth2_token_command``'s program
  installed, ``ca_file`` loadable; none of them read into any output;
- an activity log that is not this workspace's, and a Maildir that is not there;
- an empty ``Subject:``, refused by ``check`` and by the send pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.core import REPO, make_workspace, run_subprocess

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
IMAP = ('source = "imap"\nhost = "imap.example.com"\nusername = "sales@example.com"\n'
        'password_env = "CRM_TEST_IMAP_PW"')
SMTP = ('transport = "smtp"\nhost = "smtp.example.com"\nusername = "sales@example.com"\n'
        'password_env = "CRM_TEST_SMTP_PW"')
SECRET = "Tr0ub4dor&3-not-for-logs"


def check_json(cli, cfg):
    r = cli("check", "--config", str(cfg), "--json")
    return r, {c["name"]: c for c in json.loads(r.out)["checks"]}


# -- logins ----------------------------------------------------------------------------------------


def test_check_reports_unset_and_empty_password_variables(tmp_path, cli, monkeypatch):
    cfg = make_workspace(tmp_path / "ws", mailbox=IMAP, outbound=SMTP)
    monkeypatch.delenv("CRM_TEST_IMAP_PW", raising=False)
    monkeypatch.setenv("CRM_TEST_SMTP_PW", "")
    r, checks = check_json(cli, cfg)
    assert r.code == 2
    problems = checks["logins"]["problems"]
    assert problems == [
        "mailbox.password_env names $CRM_TEST_IMAP_PW, which is not set in this environment (expected the password "
        "in it: export CRM_TEST_IMAP_PW=... where crm-automation runs; the value is never logged)",
        "outbound.password_env names $CRM_TEST_SMTP_PW, which is set but empty (expected the password in it)"]
    # Before, only run found out, at its login (credentials.load_credentials): check said OK.


def test_check_passes_set_variables_and_never_prints_them(tmp_path, monkeypatch):
    cfg = make_workspace(tmp_path / "ws", mailbox=IMAP, outbound=SMTP)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CRM_TEST_IMAP_PW": SECRET, "CRM_TEST_SMTP_PW": SECRET}
    p = subprocess.run([sys.executable, "-m", "crm_automation", "-v", "check", "--config", str(cfg), "--json"],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
    checks = {c["name"]: c for c in json.loads(p.stdout)["checks"]}
    assert checks["logins"]["ok"], checks["logins"]
    assert SECRET not in p.stdout and SECRET not in p.stderr


def test_a_secret_in_password_env_is_refused_and_appears_nowhere(tmp_path):
    cfg = make_workspace(tmp_path / "ws", mailbox=IMAP.replace("CRM_TEST_IMAP_PW", SECRET))
    for args in (("check", "--json"), ("-v", "check"), ("-v", "run", "--once", "--json")):
        r = run_subprocess(*args, "--config", str(cfg))
        assert r.code == 2, r
        assert "mailbox.password_env is not the name of an environment variable" in r.out + r.err
        assert SECRET not in r.out and SECRET not in r.err, args
        assert "Traceback" not in r.err
    assert not (tmp_path / "ws" / "var").exists()  # nothing ran, so nothing could log or store it


def test_check_reports_a_token_program_that_is_not_installed(tmp_path, cli):
    mailbox = IMAP.replace('password_env = "CRM_TEST_IMAP_PW"',
                           'oauth2_token_command = "crm-no-such-token-helper --account sales"')
    cfg = make_workspace(tmp_path / "ws", mailbox=mailbox)
    r, checks = check_json(cli, cfg)
    assert r.code == 2
    (msg,) = checks["logins"]["problems"]
    assert msg.startswith("mailbox.oauth2_token_command: the program 'crm-no-such-token-helper' is not found on PATH")
    # An installed program passes (it is not run by check).
    cfg.write_text(cfg.read_text().replace("crm-no-such-token-helper", Path(sys.executable).name))
    r, checks = check_json(cli, cfg)
    assert checks["logins"]["ok"], checks["logins"]


def test_check_reports_a_ca_file_that_cannot_be_loaded(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("CRM_TEST_SMTP_PW", "x")
    cfg = make_workspace(tmp_path / "ws", outbound=SMTP + '\nca_file = "certs/ca.pem"')
    r, checks = check_json(cli, cfg)
    assert r.code == 2
    (msg,) = checks["logins"]["problems"]
    assert "outbound.ca_file = 'certs/ca.pem'" in msg and "cannot be loaded" in msg and "PEM" in msg
    (tmp_path / "ws" / "certs").mkdir()
    (tmp_path / "ws" / "certs" / "ca.pem").write_text("not a certificate\n")
    r, checks = check_json(cli, cfg)
    assert not checks["logins"]["ok"]


# -- the log, the Maildir ----------------------------------------------------------------------------


def test_check_refuses_a_log_that_is_not_this_workspaces_like_run_does(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    r, checks = check_json(cli, cfg)
    assert r.code == 0 and checks["activity log"]["ok"], checks
    assert "3 message(s) sent" in checks["activity log"]["summary"]
    for f in (tmp_path / "ws" / "var").glob("crm.sqlite*"):
        f.unlink()  # the log deleted: a run from an empty log would mail everyone again
    r, checks = check_json(cli, cfg)
    assert r.code == 2
    (msg,) = checks["activity log"]["problems"]
    assert "this is not the activity log this workspace was using" in msg
    assert not (tmp_path / "ws" / "var" / "crm.sqlite").exists()  # check wrote nothing
    assert cli("run", "--once", "--config", str(cfg)).code == 2  # and run refuses it too


def test_check_reports_a_missing_maildir_like_fetch_does(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws")
    cfg.write_text(cfg.read_text().replace('path = "inbox"', 'path = "mail/inbox"'))
    r, checks = check_json(cli, cfg)
    assert r.code == 3
    (msg,) = checks["mailbox"]["problems"]
    assert "mail/inbox: not a Maildir" in msg
    assert cli("fetch", "--config", str(cfg)).code == 3


# -- an empty Subject ----------------------------------------------------------------------------------


def test_an_empty_subject_fails_check_and_holds_the_campaign(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN, templates={"hello.txt": "Subject:\n\nHi\n"})
    where = f"{tmp_path / 'ws' / 'email_templates' / 'hello.txt'} line 1: the Subject: header is empty"
    r = cli("check", "--config", str(cfg))
    assert r.code == 2 and where in r.out
    r = cli("send", "--config", str(cfg), "--json")
    assert r.code == 2
    send = next(s for s in json.loads(r.out)["stages"] if s["job"] == "send")
    assert any(where in p for p in send["problems"])
    assert not list((tmp_path / "ws" / "var" / "outbox").glob("*.eml"))
