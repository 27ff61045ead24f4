"""ImapSource against a real Dovecot on loopback (plain, implicit TLS, STARTTLS).

The server is checked through the stdlib imaplib (the fixture's helpers), never
through the client under test, so "nothing got \\Seen" and "the message moved"
are what the server really holds.
"""

from __future__ import annotations

import base64
import logging
import sys
from pathlib import Path

import pytest
import trustme

from crm_automation.config import load_config
from crm_automation.errors import ConfigError, ServiceError
from crm_automation.mailbox.base import Cursor
from crm_automation.mailbox.imap import ImapSource
from tests.fixtures.dovecot import Account, free_port, make_message, start_dovecot

pytestmark = pytest.mark.integration

PW_ENV = "CRM_TEST_IMAP_PASSWORD"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(tmp_path: Path, **mailbox: object) -> Path:
    lines = ["[sheet]", 'source = "csv"', 'path = "customers.csv"', "", "[mailbox]", 'source = "imap"']
    lines += [f"{k} = {_toml(v)}" for k, v in mailbox.items() if v is not None]
    lines += ["", "[outbound]", 'from = "Sales <sales@example.test>"', ""]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _logs_reach_caplog():
    """The CLI (run in-process by other tests) stops propagation and raises levels; undo that here."""
    saved = []
    for name in ("crm_automation", "imapclient"):
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, lg.propagate))
        lg.setLevel(logging.NOTSET)
        lg.propagate = True
    yield
    for lg, level, propagate in saved:
        lg.setLevel(level)
        lg.propagate = propagate


@pytest.fixture
def source_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Build an ImapSource through config.toml and load_config, as the worker does."""
    made: list[ImapSource] = []

    def build(account: Account, *, security: str = "none", port: int | None = None, password: str | None = None,
              **mailbox: object) -> ImapSource:
        server = account.server
        if port is None:
            port = server.tls_port if security == "ssl" else server.port
        if "oauth2_token_command" not in mailbox:
            monkeypatch.setenv(PW_ENV, account.password if password is None else password)
            mailbox.setdefault("password_env", PW_ENV)
        cfg = load_config(write_config(tmp_path, host=server.host, port=port, security=security,
                                       username=account.user, timeout=10, **mailbox))
        src = ImapSource.from_config(cfg)
        made.append(src)
        return src

    yield build
    for s in made:
        s.close()


def bodies(n: int, start: int = 0, **kw) -> list[bytes]:
    return [make_message(start + i, **kw) for i in range(n)]


# ------------------------------------------------------------------ login / TLS
def test_plain_fetch_yields_every_message_in_uid_order(imap_account, source_for):
    msgs = bodies(3)
    uids = imap_account.append(msgs)
    src = source_for(imap_account)
    uv = src.uidvalidity("INBOX")
    assert uv == imap_account.uidvalidity()
    got = list(src.fetch("INBOX", None))
    assert [m.uid for m in got] == uids
    assert [m.raw for m in got] == msgs
    assert {(m.folder, m.uidvalidity) for m in got} == {("INBOX", uv)}


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_tls_login_with_test_ca(imap_tls_account, source_for, security):
    imap_tls_account.append(bodies(2))
    src = source_for(imap_tls_account, security=security, ca_file=str(imap_tls_account.server.ca_file))
    assert len(list(src.fetch("INBOX", None))) == 2


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_tls_with_untrusted_ca_is_refused(imap_tls_account, source_for, tmp_path, security):
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    src = source_for(imap_tls_account, security=security, ca_file=str(other))
    with pytest.raises(ServiceError) as e:
        src.uidvalidity("INBOX")
    msg = str(e.value)
    assert "not trusted" in msg
    assert f"127.0.0.1:{src.port}" in msg
    assert imap_tls_account.user in msg
    assert e.value.exit_code == 3
    assert "ca_file" in (e.value.hint or "")


def test_tls_port_without_ca_is_refused_by_default(imap_tls_account, source_for):
    """The system trust store does not know the test CA: verification is on by default."""
    src = source_for(imap_tls_account, security="ssl")
    with pytest.raises(ServiceError, match="not trusted"):
        src.uidvalidity("INBOX")


def test_starttls_required_but_not_offered(imap_account, source_for):
    src = source_for(imap_account, security="starttls")  # the plain server has ssl = no
    with pytest.raises(ServiceError, match=r"127\.0\.0\.1:\d+ .*does not offer STARTTLS"):
        src.uidvalidity("INBOX")


def test_implicit_tls_against_a_plain_port_fails_cleanly(imap_account, source_for):
    src = source_for(imap_account, security="ssl", port=imap_account.server.port)
    with pytest.raises(ServiceError, match=r"TLS handshake failed|cannot connect") as e:
        src.uidvalidity("INBOX")
    assert f"127.0.0.1:{imap_account.server.port}" in str(e.value)


def test_missing_ca_file_is_a_config_error(imap_tls_account, source_for, tmp_path):
    with pytest.raises(ConfigError, match=r"ca_file: .*nope\.pem does not exist"):
        source_for(imap_tls_account, security="ssl", ca_file=str(tmp_path / "nope.pem"))


def test_bad_password_names_server_and_user_but_not_the_password(imap_account, source_for):
    wrong = "Wr0ng-Secret-xyz"
    src = source_for(imap_account, password=wrong)
    with pytest.raises(ServiceError) as e:
        list(src.fetch("INBOX", None))
    text = f"{e.value} {e.value.hint}"
    assert f"127.0.0.1:{src.port}" in text
    assert imap_account.user in text
    assert "login refused" in text
    assert PW_ENV in text
    assert wrong not in text
    assert imap_account.password not in text


def test_server_down_is_a_service_error(imap_account, source_for):
    port = free_port()  # nothing listens there
    src = source_for(imap_account, port=port)
    with pytest.raises(ServiceError) as e:
        src.uidvalidity("INBOX")
    assert f"127.0.0.1:{port}" in str(e.value)
    assert imap_account.user in str(e.value)
    assert "cannot connect" in str(e.value)


def test_secrets_never_reach_the_debug_log(imap_account, source_for, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    imap_account.append(bodies(1))
    src = source_for(imap_account)
    assert len(list(src.fetch("INBOX", None))) == 1
    src.close()
    token_file = tmp_path / "token"
    token_file.write_text(imap_account.password + "\n")
    oauth = source_for(imap_account, oauth2_token_command=f"cat {token_file}")
    assert len(list(oauth.fetch("INBOX", None))) == 1
    oauth.close()
    assert "LOGIN" in caplog.text or "AUTHENTICATE" in caplog.text  # the DEBUG lines were really captured
    auth = f"user={imap_account.user}\1auth=Bearer {imap_account.password}\1\1".encode()
    assert imap_account.password not in caplog.text
    assert base64.b64encode(auth).decode() not in caplog.text


def test_the_bodies_fetch_is_traced_only_when_the_trace_logger_listens(imap_account, source_for, caplog):
    """imapclient traces every line imaplib reads; for a large fetch that costs a few percent, for nothing at INFO."""
    imap_account.append(bodies(3))
    src = source_for(imap_account)
    src.uidvalidity("INBOX")  # connected and logged in
    imap = src._client._imap
    traced: list[str] = []
    real = imap._mesg
    imap._mesg = lambda line, *a: (traced.append(line), real(line, *a))
    caplog.set_level(logging.INFO)
    assert len(list(src.fetch("INBOX", None))) == 3
    assert traced and not [line for line in traced if "BODY" in line]  # other commands are still traced
    assert imap.debug > 0
    caplog.set_level(logging.DEBUG, logger="imapclient.imaplib")
    assert len(list(src.fetch("INBOX", None))) == 3
    assert [line for line in traced if "BODY" in line]
    assert [r for r in caplog.records if r.name == "imapclient.imaplib" and "BODY" in r.getMessage()]


# -------------------------------------------------------------------- XOAUTH2
def test_xoauth2_with_token_command(imap_account, source_for, tmp_path):
    """A real SASL XOAUTH2 exchange: Dovecot's passwd-file passdb checks the bearer token like a password."""
    token = "ya29.test-token-" + imap_account.password
    account = imap_account.server.set_password(imap_account.user, token)
    script = tmp_path / "token.py"
    script.write_text(f"print({token!r})\n")
    account.append(bodies(2))
    src = source_for(account, oauth2_token_command=f"{sys.executable} {script}")
    assert len(list(src.fetch("INBOX", None))) == 2


def test_xoauth2_rejected_token(imap_account, source_for, tmp_path):
    script = tmp_path / "token.py"
    script.write_text("print('expired-token-123')\n")
    src = source_for(imap_account, oauth2_token_command=f"{sys.executable} {script}")
    with pytest.raises(ServiceError) as e:
        src.uidvalidity("INBOX")
    assert "XOAUTH2" in str(e.value)
    assert imap_account.user in str(e.value)
    assert "expired-token-123" not in f"{e.value} {e.value.hint}"


def test_failing_token_command_is_reported(imap_account, source_for, tmp_path):
    script = tmp_path / "token.py"
    script.write_text("import sys\nsys.exit(4)\n")
    src = source_for(imap_account, oauth2_token_command=f"{sys.executable} {script}")
    with pytest.raises(ServiceError, match=r"oauth2_token_command exited with status 4"):
        src.uidvalidity("INBOX")


# ------------------------------------------------------------------ fetching
def test_incremental_fetch_by_uid(imap_account, source_for):
    imap_account.append(bodies(5))
    src = source_for(imap_account)
    first = list(src.fetch("INBOX", None, batch=2))
    assert [m.uid for m in first] == [1, 2, 3, 4, 5]
    uv = first[0].uidvalidity
    assert list(src.fetch("INBOX", Cursor(uv, 5))) == []
    new = imap_account.append(bodies(2, start=100))
    again = list(src.fetch("INBOX", Cursor(uv, 5), batch=2))
    assert [m.uid for m in again] == new == [6, 7]
    assert [m.uid for m in src.fetch("INBOX", Cursor(uv, 6))] == [7]


def test_cursor_past_the_highest_uid_yields_nothing(imap_account, source_for):
    """``UID FETCH 7:*`` returns UID 6 when 6 is the highest: it must be filtered out."""
    imap_account.append(bodies(7))
    with imap_account.session() as c:  # expunge the last message: highest UID 6, UIDNEXT 8
        c.select("INBOX")
        c.uid("STORE", "7", "+FLAGS.SILENT", r"(\Deleted)")
        c.expunge()
    src = source_for(imap_account)
    uv = src.uidvalidity("INBOX")
    assert imap_account.uids() == [1, 2, 3, 4, 5, 6]
    assert list(src.fetch("INBOX", Cursor(uv, 6))) == []


def test_fetch_marks_nothing_seen(imap_account, source_for):
    imap_account.append(bodies(4))
    src = source_for(imap_account)
    assert len(list(src.fetch("INBOX", None))) == 4
    assert imap_account.seen_uids() == []


def test_several_folders(imap_account, source_for):
    imap_account.append(bodies(2), "INBOX")
    imap_account.append(bodies(3, start=10), "Support")
    src = source_for(imap_account, folders=["INBOX", "Support"])
    assert src.folders() == ["INBOX", "Support"]
    got = {f: [m.uid for m in src.fetch(f, None)] for f in src.folders()}
    assert got == {"INBOX": [1, 2], "Support": [1, 2, 3]}
    assert imap_account.seen_uids("Support") == []


def test_nested_folder_names_use_slash_in_the_config(imap_account, source_for):
    imap_account.append(bodies(2), "Clients.Acme")
    src = source_for(imap_account, folders=["Clients/Acme"])
    got = list(src.fetch("Clients/Acme", None))
    assert [(m.folder, m.uid) for m in got] == [("Clients/Acme", 1), ("Clients/Acme", 2)]


def test_missing_folder_is_named(imap_account, source_for):
    src = source_for(imap_account, folders=["Nope"])
    with pytest.raises(ServiceError, match=r"folder 'Nope' does not exist \(folders there: INBOX"):
        list(src.fetch("Nope", None))


def test_uidvalidity_change_yields_everything_again(imap_account, source_for):
    imap_account.append(bodies(3), "Work")
    src = source_for(imap_account, folders=["Work"])
    first = list(src.fetch("Work", None))
    old = Cursor(first[-1].uidvalidity, first[-1].uid)
    src.close()
    imap_account.delete("Work")
    imap_account.append(bodies(3) + bodies(1, start=50), "Work")
    new_uv = src.uidvalidity("Work")
    assert new_uv != old.uidvalidity
    again = list(src.fetch("Work", old))
    assert [m.uid for m in again] == [1, 2, 3, 4]
    assert {m.uidvalidity for m in again} == {new_uv}


def test_oversized_message_is_yielded_cut_one_byte_past_the_limit(imap_account, source_for):
    big = make_message(1, body="x" * 5000)
    small = make_message(2)
    imap_account.append([big, small])
    src = source_for(imap_account, max_message_bytes=1024)
    got = list(src.fetch("INBOX", None))
    assert [m.uid for m in got] == [1, 2]
    assert got[0].raw == big[:1025]
    assert got[1].raw == small


def test_dropped_connection_mid_fetch_reconnects_and_misses_nothing(imap_account, source_for, caplog):
    msgs = bodies(30)
    imap_account.append(msgs)
    src = source_for(imap_account, batch_size=10)
    got = []
    with caplog.at_level(logging.WARNING, logger="crm_automation.mailbox.imap"):
        for m in src.fetch("INBOX", None):
            got.append(m)
            if len(got) in (1, 15):  # kick while the caller is busy: next batch finds the socket closed
                imap_account.kick()
    assert [m.uid for m in got] == list(range(1, 31))
    assert [m.raw for m in got] == msgs
    assert caplog.text.count("reconnecting") == 2
    assert imap_account.seen_uids() == []


def test_server_gone_mid_fetch_raises_after_one_retry(tmp_path, source_for):
    server = start_dovecot()
    try:
        account = server.add_user()
        account.append(bodies(6))
        src = source_for(account, batch_size=3)
        it = src.fetch("INBOX", None)
        assert [next(it).uid for _ in range(3)] == [1, 2, 3]
        server.stop()
        with pytest.raises(ServiceError, match=r"cannot connect"):
            next(it)
    finally:
        server.stop()


# ----------------------------------------------------------- processed folder
@pytest.mark.parametrize(("configured", "dest"), [("Processed", "Processed"), ("CRM/Processed", "CRM.Processed")])
def test_mark_processed_moves_only_those_messages(imap_account, source_for, configured, dest):
    """``/`` in the config is the hierarchy separator; Dovecot's Maildir++ delimiter is ``.``."""
    imap_account.append(bodies(5))
    src = source_for(imap_account, processed_folder=configured)
    got = list(src.fetch("INBOX", None))
    src.mark_processed(got[:3])
    assert imap_account.uids() == [4, 5]
    moved = imap_account.message_ids(dest)
    assert len(moved) == 3
    assert imap_account.seen_uids(dest) == []
    # the generator goes on after mark_processed, as the worker interleaves them
    src.mark_processed(got[3:])
    assert imap_account.uids() == []
    assert len(imap_account.message_ids(dest)) == 5


def test_mark_processed_interleaved_with_fetch(imap_account, source_for):
    imap_account.append(bodies(9))
    src = source_for(imap_account, processed_folder="Done", batch_size=3)
    seen = []
    batch = []
    for m in src.fetch("INBOX", None):
        seen.append(m.uid)
        batch.append(m)
        if len(batch) == 2:
            src.mark_processed(batch)
            batch = []
    src.mark_processed(batch)
    assert seen == list(range(1, 10))
    assert imap_account.uids() == []
    assert len(imap_account.uids("Done")) == 9
    # batches after the first were read while INBOX was selected read-write (for the move): PEEK matters
    assert imap_account.seen_uids("Done") == []


def test_mark_processed_without_folder_is_a_no_op(imap_account, source_for):
    imap_account.append(bodies(2))
    src = source_for(imap_account)
    src.mark_processed(list(src.fetch("INBOX", None)))
    assert imap_account.uids() == [1, 2]


def test_mark_processed_skips_messages_from_an_old_uidvalidity(imap_account, source_for):
    imap_account.append(bodies(2), "Work")
    src = source_for(imap_account, folders=["Work"], processed_folder="Done")
    old = list(src.fetch("Work", None))
    src.close()
    imap_account.delete("Work")
    imap_account.append(bodies(2, start=10), "Work")
    src.mark_processed(old)
    assert imap_account.uids("Work") == [1, 2]  # the new messages with the same UIDs stay put


# ----------------------------------------------------------- find_message_ids
def test_find_message_ids(imap_account, source_for):
    ids = [f"<send-{i}@example.test>" for i in range(25)]
    imap_account.append([make_message(i, message_id=mid) for i, mid in enumerate(ids)], "Sent")
    src = source_for(imap_account)
    wanted = [*ids[:22], "<send-1@example.test.other>", "<send-99@example.test>", "<end-1@example.test>"]
    assert src.find_message_ids("Sent", wanted) == set(ids[:22])
    # brackets are optional on the caller's side
    assert src.find_message_ids("Sent", ["send-3@example.test"]) == {"send-3@example.test"}
    assert src.find_message_ids("Sent", []) == set()


def test_find_message_ids_in_missing_folder_finds_nothing(imap_account, source_for):
    src = source_for(imap_account)
    assert src.find_message_ids("Sent", ["<a@b>"]) == set()


def test_close_is_idempotent(imap_account, source_for):
    src = source_for(imap_account)
    src.uidvalidity("INBOX")
    src.close()
    src.close()
    assert src.uidvalidity("INBOX") > 0  # reconnects on use



def test_batches_are_cut_by_total_size(imap_account, source_for, monkeypatch, caplog):
    """A run of large messages is fetched a few at a time, whatever batch_size says."""
    import crm_automation.mailbox.imap_fetch as imap_fetch

    monkeypatch.setattr(imap_fetch, "MAX_BATCH_BYTES", 3000)
    msgs = [make_message(i, body="y" * 1200) for i in range(6)]  # ~1.4 kB each: two per 3 kB batch
    imap_account.append(msgs)
    src = source_for(imap_account, batch_size=100)
    with caplog.at_level(logging.DEBUG, logger="imapclient"):
        got = list(src.fetch("INBOX", None))
    assert [m.raw for m in got] == msgs
    body_fetches = [r.getMessage() for r in caplog.records if "BODY.PEEK[]" in r.getMessage()
                    and r.getMessage().startswith(">")]
    assert len(body_fetches) == 3, body_fetches


def test_uid_search_in_windows_misses_nothing(imap_account, source_for, monkeypatch):
    import crm_automation.mailbox.imap_fetch as imap_fetch

    monkeypatch.setattr(imap_fetch, "SEARCH_WINDOW", 3)
    imap_account.append(bodies(11))
    src = source_for(imap_account)
    uv = src.uidvalidity("INBOX")
    assert [m.uid for m in src.fetch("INBOX", None)] == list(range(1, 12))
    assert [m.uid for m in src.fetch("INBOX", Cursor(uv, 4))] == list(range(5, 12))


def test_certificate_for_another_host_name_is_refused(source_for):
    """The CA is trusted but the certificate names another host: host names are verified too."""
    server = start_dovecot(tls=True, tls_names=("mail.example.test",))
    try:
        account = server.add_user()
        src = source_for(account, security="ssl", ca_file=str(server.ca_file))
        with pytest.raises(ServiceError, match=r"not trusted: .*(mismatch|doesn't match|not valid for)"):
            src.uidvalidity("INBOX")
    finally:
        server.stop()


@pytest.mark.parametrize("uidplus", [True, False], ids=["copy+uid-expunge", "copy-only"])
def test_mark_processed_on_a_server_without_move(source_for, uidplus, caplog):
    """Without MOVE: COPY, then \\Deleted + UID EXPUNGE of exactly those UIDs (UIDPLUS); else copy only."""
    caps = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UNSELECT CHILDREN" + (" UIDPLUS" if uidplus else "")
    server = start_dovecot(extra_conf=f"protocol imap {{\n  imap_capability = {caps}\n}}\n")
    try:
        account = server.add_user()
        account.append(bodies(5))
        with account.session() as c:  # someone else's message marked \Deleted, not yet expunged
            c.select("INBOX")
            c.uid("STORE", "5", "+FLAGS.SILENT", r"(\Deleted)")
        src = source_for(account, processed_folder="Done")
        got = list(src.fetch("INBOX", None))
        with caplog.at_level(logging.DEBUG, logger="imapclient"):
            src.mark_processed(got[:3])
        sent = [r.getMessage() for r in caplog.records if r.getMessage().startswith(">")]
        assert not any(" MOVE " in line for line in sent), sent
        assert any("UID EXPUNGE 1,2,3" in line for line in sent) == uidplus, sent
        assert len(account.uids("Done")) == 3
        if uidplus:
            assert account.uids() == [4, 5]  # 5 is still there: only our UIDs were expunged
        else:
            assert account.uids() == [1, 2, 3, 4, 5]
    finally:
        server.stop()


def test_stale_connection_between_calls_is_reopened(imap_account, source_for):
    imap_account.append(bodies(3))
    src = source_for(imap_account, processed_folder="Done")
    got = list(src.fetch("INBOX", None))
    imap_account.kick()  # e.g. the server's idle timeout while the worker was writing the log
    src.mark_processed(got)
    assert imap_account.uids() == []
    imap_account.kick()
    assert src.find_message_ids("Done", [m for m in imap_account.message_ids("Done")]) == set(
        imap_account.message_ids("Done"))


def test_client_identifies_itself_with_imap_id(imap_account, source_for):
    """163.com/126.com refuse SELECT until the client sends ID (RFC 2971); Dovecot logs what it received."""
    src = source_for(imap_account)
    assert list(src.fetch("INBOX", None)) == []
    src.close()
    log = (imap_account.server.directory / "dovecot.log").read_text(errors="replace")
    assert "name=crm-automation" in log


# ------------------------------------------------------------- the plain-answer fast path (issue #13)


def test_bodies_read_past_imapclients_parser_are_byte_for_byte_what_it_gives(imap_account):
    """The same UIDs fetched both ways from the real server: identical bytes, nothing marked read."""
    import imapclient

    from crm_automation.mailbox.imap_fetch import whole_bodies as _whole_bodies

    msgs = [make_message(i) for i in range(30)]
    msgs += [b"From: a@x.test\r\nSubject: \xc4\xe3\xba\xc3 raw 8-bit\r\n\r\n\xc4\xe3\xba\xc3\r\n",
             b"From: a@x.test\r\nSubject: empty body\r\n\r\n",
             b"From: a@x.test\r\nSubject: big\r\n\r\n" + b"0123456789abcdef\r\n" * 20000,
             b"From: a@x.test\r\nSubject: parens ) ( and {braces} in the body\r\n\r\n) {12}\r\n* 3 FETCH\r\n"]
    imap_account.load_maildir(msgs)
    uids = imap_account.uids()
    c = imapclient.IMAPClient(imap_account.server.host, port=imap_account.server.port, ssl=False)
    try:
        c.login(imap_account.user, imap_account.password)
        c.select_folder("INBOX", readonly=True)
        theirs = {u: bytes(d[b"BODY[]"]) for u, d in c.fetch(uids, ["BODY.PEEK[]"]).items()}
        ours = _whole_bodies(c, uids)
        assert ours == theirs and len(ours) == len(msgs)
        assert sorted(ours.values()) == sorted(m.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for m in msgs)
        assert _whole_bodies(c, uids[3:5]) == {u: theirs[u] for u in uids[3:5]}
    finally:
        c.logout()
    assert imap_account.seen_uids() == []


def test_answers_in_any_other_shape_go_to_imapclients_parser():
    from imapclient.exceptions import IMAPClientError
    from imapclient.response_parser import parse_fetch_response

    from crm_automation.mailbox.imap_fetch import plain_bodies as _plain_bodies

    plain = [(b"1 (UID 7 BODY[] {5}", b"hello"), b")", (b"2 (UID 9 BODY[] {0}", b""), b")"]
    assert _plain_bodies(plain) == {7: b"hello", 9: b""}
    others = [
        [(b"1 (UID 7 BODY[] {5}", b"hello"), b" FLAGS (\\Seen))"],  # another item after the body
        [(b"1 (BODY[] {5}", b"hello"), b" UID 7)"],  # the UID after the body
        [b'1 (UID 7 BODY[] "hello")'],  # a quoted string, no literal
        [b"1 (UID 7 BODY[] NIL)"],
        [(b"1 (UID 7 BODY[] {5}", b"hello"), b")", b"3 (FLAGS (\\Seen))"],  # an unsolicited FETCH
    ]
    for data in others:
        assert _plain_bodies(data) is None, data
        parsed = parse_fetch_response(data, True, True)  # what the fallback gives instead
        assert parsed[7][b"BODY[]"] in (b"hello", None)
    garbled = [(b"1 (UID 7 BODY[] {6}", b"hello"), b")"]  # a literal of another length than announced
    assert _plain_bodies(garbled) is None
    with pytest.raises(IMAPClientError):  # the fallback refuses it too: the fetch fails as before (ServiceError)
        parse_fetch_response(garbled, True, True)
