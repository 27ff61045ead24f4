"""Click and open tracking end to end (issue #19): real compose output, parsed back; the log's once-only records.

A campaign with ``track_clicks``/``track_opens`` and ``[serve] public_url``
is sent by a real ``run --once`` (outbox files, and once through a real
aiosmtpd server); the messages are read back with the ``email`` package.
``record_click``/``record_open`` are what ``serve``'s ``/c/`` and ``/o/``
call: they answer from what was stored with the send, never from the
request.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from crm_automation.app import reports
from crm_automation.app.tracking import TrackOutcome, record_click, record_open
from crm_automation.models import Kind, TrackedDetails
from crm_automation.tokens import token_of
from crm_automation.workspace import Workspace
from tests.fixtures.core import db_rows, make_workspace

PUBLIC = "https://crm.example.com"
SERVE = f'[serve]\npublic_url = "{PUBLIC}"\n'
UNSUB = "https://unsub.example.com/u/{token}"
OUTBOX = f'transport = "outbox"\noutbox = "var/outbox"\nunsubscribe_url = "{UNSUB}"'
TEXT = ("Subject: Hello {{ customer.name }}\n\nOffer: https://example.com/offer?a=1&b=2.\n"
        "Unsubscribe: {{ unsubscribe }}\nHelp: https://crm.example.com/help\n")
HTML = ('<html><body><p><a href="https://example.com/offer?a=1&amp;b=2">offer</a> '
        '<a href="https://shop.example.com/p/{{ customer.name|urlencode }}">shop</a> '
        '<a href="{{ unsubscribe }}">unsubscribe</a> <a href="mailto:sales@example.com">mail</a> '
        '<a href="javascript:alert(1)">js</a> <a href="https://crm.example.com/help">help</a></p></body></html>')
T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def _campaign(*flags: str) -> str:
    return ('[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
            + "".join(f"{f} = true\n" for f in flags))


def _sent(tmp_path: Path, cli, *flags: str, serve: str = SERVE, rows: int = 1) -> Workspace:
    cfg = make_workspace(tmp_path / "ws", campaigns=_campaign(*flags), outbound=OUTBOX, extra_config=serve,
                         templates={"hello.txt": TEXT, "hello.html": HTML},
                         rows=[{"Email": f"c{i}@example.com", "Name": f"Customer {i}", "Stage": "lead",
                                "Owner": "owner@example.com"} for i in range(rows)])
    r = cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00")
    assert r.code == 0, r.out + r.err
    return Workspace.load(cfg)


def _messages(ws: Workspace) -> dict[str, EmailMessage]:
    """Outbox messages by recipient, parsed with the email package."""
    out = {}
    for p in sorted((ws.cfg.path.parent / "var" / "outbox").glob("*.eml")):
        msg = message_from_bytes(p.read_bytes(), policy=policy.default)
        assert isinstance(msg, EmailMessage)
        out[str(msg["To"]).rpartition("<")[2].rstrip(">")] = msg
    return out


def _parts(msg: EmailMessage) -> tuple[str, str]:
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


def _token(msg: EmailMessage) -> str:
    return token_of(str(msg["Message-ID"]))


def test_links_in_both_parts_are_rewritten_and_recorded_with_the_send(tmp_path, cli):
    ws = _sent(tmp_path, cli, "track_clicks", "track_opens")
    msg = _messages(ws)["c0@example.com"]
    token = _token(msg)
    text, html = _parts(msg)
    c = f"{PUBLIC}/c/{token}"
    unsub = UNSUB.replace("{token}", token)
    assert text.splitlines() == [f"Offer: {c}/0.", f"Unsubscribe: {unsub}", "Help: https://crm.example.com/help"]
    assert (f'<a href="{c}/0">offer</a> <a href="{c}/1">shop</a> <a href="{unsub}">unsubscribe</a> '
            '<a href="mailto:sales@example.com">mail</a> <a href="javascript:alert(1)">js</a> '
            '<a href="https://crm.example.com/help">help</a>') in html
    assert f'<img src="{PUBLIC}/o/{token}.gif" width="1" height="1"' in html
    assert html.rstrip().endswith("</body></html>")
    assert str(msg["List-Unsubscribe"]).endswith(f"<{unsub}>")  # the header keeps the real link (RFC 8058)
    db = ws.cfg.database
    ((send_id,),) = db_rows(db, "SELECT id FROM sends")
    assert db_rows(db, "SELECT n, url, clicked_at FROM send_links WHERE send_id = ? ORDER BY n", send_id) == [
        (0, "https://example.com/offer?a=1&b=2", None), (1, "https://shop.example.com/p/Customer%200", None)]
    # The log keeps the text as written, with the real destinations.
    ((body,),) = db_rows(db, "SELECT body FROM activities WHERE kind = 'email_out'")
    assert "Offer: https://example.com/offer?a=1&b=2." in body and "/c/" not in body


def test_a_click_is_recorded_once_per_link_per_send_and_redirects_every_time(tmp_path, cli):
    ws = _sent(tmp_path, cli, "track_clicks", rows=2)
    msgs = _messages(ws)
    t0, t1 = _token(msgs["c0@example.com"]), _token(msgs["c1@example.com"])
    db = ws.cfg.database
    sends = dict(db_rows(db, "SELECT customer_key, id FROM sends"))
    first = record_click(ws, t0, 0, T0 + timedelta(hours=1))
    assert (first.outcome, first.url, first.customer, first.campaign, first.step) == (
        TrackOutcome.RECORDED, "https://example.com/offer?a=1&b=2", "c0@example.com", "hello", 0)
    assert json.loads(json.dumps(first.to_json())) == {
        "outcome": "recorded", "n": 0, "url": "https://example.com/offer?a=1&b=2", "customer": "c0@example.com",
        "campaign": "hello", "step": 0}
    for minutes in (1, 2, 3):
        again = record_click(ws, t0, 0, T0 + timedelta(hours=1, minutes=minutes))
        assert (again.outcome, again.url) == (TrackOutcome.ALREADY, "https://example.com/offer?a=1&b=2")
    assert record_click(ws, t0, 1, T0 + timedelta(hours=2)).url == "https://shop.example.com/p/Customer%200"
    assert record_click(ws, t1, 0, T0 + timedelta(hours=2)).outcome is TrackOutcome.RECORDED  # another send
    clicks = db_rows(db, "SELECT customer_key, campaign, step, subject, details FROM activities WHERE kind = 'click' "
                         "ORDER BY id")
    assert [(k, c, s, u, json.loads(d)) for k, c, s, u, d in clicks] == [
        ("c0@example.com", "hello", 0, "https://example.com/offer?a=1&b=2",
         {"send_id": sends["c0@example.com"], "n": 0, "url": "https://example.com/offer?a=1&b=2"}),
        ("c0@example.com", "hello", 0, "https://shop.example.com/p/Customer%200",
         {"send_id": sends["c0@example.com"], "n": 1, "url": "https://shop.example.com/p/Customer%200"}),
        ("c1@example.com", "hello", 0, "https://example.com/offer?a=1&b=2",
         {"send_id": sends["c1@example.com"], "n": 0, "url": "https://example.com/offer?a=1&b=2"})]
    # The funnel's helper counts distinct sends clicked from these details.
    assert db_rows(db, "SELECT COUNT(DISTINCT json_extract(details, '$.send_id')) FROM activities "
                       "WHERE kind = 'click'") == [(2,)]
    (entry,) = [e for e in reports.timeline(ws, "c1@example.com").entries if e.activity.kind is Kind.CLICK]
    assert entry.activity.details == TrackedDetails(sends["c1@example.com"], 0, "https://example.com/offer?a=1&b=2")
    assert entry.headline == "[hello/0] https://example.com/offer?a=1&b=2"


@pytest.mark.parametrize(("token", "n"), [
    ("KNOWN", 2), ("KNOWN", -1), ("KNOWN", 10_000_000), ("crm.0123456789abcdef0123456789abcdef", 0),
    ("crm.zz", 0), ("../../x", 0), ("KNOWN\r\nSet-Cookie: a=b", 0)])
def test_an_unknown_token_or_link_is_unknown_and_records_nothing(tmp_path, cli, token, n):
    ws = _sent(tmp_path, cli, "track_clicks")
    known = _token(_messages(ws)["c0@example.com"])
    result = record_click(ws, token.replace("KNOWN", known), n, T0 + timedelta(hours=1))
    assert (result.outcome, result.url) == (TrackOutcome.UNKNOWN, None)
    assert result.to_json()["outcome"] == "unknown"
    assert db_rows(ws.cfg.database, "SELECT COUNT(*) FROM activities WHERE kind = 'click'") == [(0,)]
    assert db_rows(ws.cfg.database, "SELECT COUNT(*) FROM send_links WHERE clicked_at IS NOT NULL") == [(0,)]


def test_a_stored_url_that_is_no_longer_safe_is_never_handed_out(tmp_path, cli):
    """A row edited by hand to a javascript: or CR/LF URL: unknown, so the web never puts it in Location."""
    ws = _sent(tmp_path, cli, "track_clicks")
    token = _token(_messages(ws)["c0@example.com"])
    import sqlite3

    conn = sqlite3.connect(ws.cfg.database)
    with conn:
        conn.execute("UPDATE send_links SET url = 'javascript:alert(1)' WHERE n = 0")
        conn.execute("UPDATE send_links SET url = 'https://a.example/x' || char(13, 10) || 'Set-Cookie: a' "
                     "WHERE n = 1")
    conn.close()
    assert record_click(ws, token, 0, T0).outcome is TrackOutcome.UNKNOWN
    assert record_click(ws, token, 1, T0).outcome is TrackOutcome.UNKNOWN


def test_an_open_is_recorded_once_per_send(tmp_path, cli):
    ws = _sent(tmp_path, cli, "track_opens")
    msg = _messages(ws)["c0@example.com"]
    token = _token(msg)
    _, html = _parts(msg)
    assert f"{PUBLIC}/o/{token}.gif" in html and "/c/" not in html  # opens only: links untouched
    assert db_rows(ws.cfg.database, "SELECT COUNT(*) FROM send_links") == [(0,)]
    first = record_open(ws, token, T0 + timedelta(minutes=1))
    assert (first.outcome, first.customer, first.campaign, first.step) == (
        TrackOutcome.RECORDED, "c0@example.com", "hello", 0)
    assert record_open(ws, token, T0 + timedelta(minutes=2)).outcome is TrackOutcome.ALREADY
    assert record_open(ws, "crm.0123456789abcdef0123456789abcdef", T0).outcome is TrackOutcome.UNKNOWN
    assert record_open(ws, "not-a-token", T0).outcome is TrackOutcome.UNKNOWN
    ((send_id,),) = db_rows(ws.cfg.database, "SELECT id FROM sends")
    opens = db_rows(ws.cfg.database, "SELECT customer_key, occurred_at, details FROM activities WHERE kind = 'open'")
    assert [(k, t, json.loads(d)) for k, t, d in opens] == [("c0@example.com", "2026-11-27T02:01:00Z",
                                                            {"send_id": send_id})]


def test_tracking_is_off_by_default(tmp_path, cli):
    ws = _sent(tmp_path, cli)
    msg = _messages(ws)["c0@example.com"]
    text, html = _parts(msg)
    assert "Offer: https://example.com/offer?a=1&b=2." in text
    assert '<a href="https://example.com/offer?a=1&amp;b=2">offer</a>' in html
    assert "/c/" not in text + html and "/o/" not in html
    assert db_rows(ws.cfg.database, "SELECT COUNT(*) FROM send_links") == [(0,)]
    assert record_click(ws, _token(msg), 0, T0).outcome is TrackOutcome.UNKNOWN


def test_without_public_url_the_mail_goes_untouched_and_check_says_why(tmp_path, cli):
    ws = _sent(tmp_path, cli, "track_clicks", "track_opens", serve="")
    text, html = _parts(_messages(ws)["c0@example.com"])
    assert "Offer: https://example.com/offer?a=1&b=2." in text and "/c/" not in text + html and "/o/" not in html
    r = cli("check", "--config", str(ws.cfg.path))
    assert r.code == 0, r.out + r.err
    (warning,) = [line for line in r.out.splitlines() if "warning:" in line]
    assert ("campaign 'hello' has track_clicks and track_opens = true, but [serve] public_url is not set" in warning
            and "tracking cannot work" in warning and "links untouched" in warning)
    # With public_url: no warning.
    ws.cfg.path.write_text(ws.cfg.path.read_text(encoding="utf-8") + SERVE, encoding="utf-8")
    assert "warning:" not in cli("check", "--config", str(ws.cfg.path)).out


@pytest.mark.parametrize(("value", "shown"), [('"yes"', "'yes'"), ("1", "1")])
def test_a_tracking_flag_of_the_wrong_type_is_a_config_error(tmp_path, cli, value, shown):
    cfg = make_workspace(tmp_path / "ws", campaigns=_campaign() + f"track_clicks = {value}\n")
    r = cli("check", "--config", str(cfg))
    assert r.code == 2
    assert f"campaigns.toml: campaign.0.track_clicks is {shown} (expected true or false)" in r.out + r.err
    assert "Traceback" not in r.out + r.err


@pytest.mark.integration
def test_tracked_links_through_a_real_smtp_server(tmp_path, cli, smtpd):
    outbound = (f'transport = "smtp"\nhost = "{smtpd.host}"\nport = {smtpd.port}\nsecurity = "none"\n'
                f'unsubscribe_url = "{UNSUB}"')
    cfg = make_workspace(tmp_path / "ws", campaigns=_campaign("track_clicks"), outbound=outbound, extra_config=SERVE,
                         templates={"hello.txt": TEXT, "hello.html": HTML})
    r = cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00")
    assert r.code == 0, r.out + r.err
    received = {m.rcpt_tos[0]: m.message for m in smtpd.messages}
    assert sorted(received) == ["c0@example.com", "c1@example.com", "c2@example.com"]
    ws = Workspace.load(cfg)
    for addr, msg in received.items():
        token = _token(msg)
        text, html = _parts(msg)
        assert f"Offer: {PUBLIC}/c/{token}/0." in text and f'href="{PUBLIC}/c/{token}/1"' in html
        shop = record_click(ws, token, 1, T0 + timedelta(hours=1))
        assert (shop.outcome, shop.customer) == (TrackOutcome.RECORDED, addr)
        assert shop.url == f"https://shop.example.com/p/Customer%20{addr[1]}"
    assert db_rows(ws.cfg.database, "SELECT COUNT(*) FROM activities WHERE kind = 'click'") == [(3,)]
