"""Bounces as a real Postfix writes them (issue #11): the recorded corpus, and a live check against it.

``tests/data/eml/bounce/postfix_*.eml`` listed in ``postfix_expected.json`` were
made by a private Postfix on loopback (``tests/data/eml/make_postfix_bounces.py``).
The recorded-corpus tests need no server and always run (CI included). The
live test runs the same scenarios through a fresh private Postfix
(``tests/fixtures/postfix.py``) and checks that Postfix still writes what the
corpus says; it skips where Postfix is not installed (``.ci/run`` does not
install it). DSNs are read with the stdlib ``email`` package only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

# The fixture module is loaded as a plugin below (pytest_plugins) and imported for its helpers
# first; registering it for assertion rewriting before that import keeps pytest from warning.
pytest.register_assert_rewrite("tests.fixtures.postfix")

from tests.fixtures.postfix import (  # noqa: E402
    CUSTOMER_DOMAIN,
    MYHOSTNAME,
    SCENARIOS,
    SENDER,
    Postfix,
    delivery_status,
    expectation,
    original_message_id,
    parse,
    produce_corpus,
    recipient_fields,
)

BOUNCE = Path(__file__).resolve().parents[1] / "data" / "eml" / "bounce"
EXPECTED: dict[str, dict[str, dict[str, str]]] = json.loads(
    (BOUNCE / "postfix_expected.json").read_text(encoding="utf-8"))
SUBJECTS = {"failed": "Undelivered Mail Returned to Sender", "delayed": "Delayed Mail (still being retried)"}


def recorded(name: str):
    return parse((BOUNCE / name).read_bytes())


def test_expectations_cover_exactly_the_recorded_scenarios():
    assert set(EXPECTED) == {sc.name for sc in SCENARIOS}
    for name in EXPECTED:
        assert (BOUNCE / name).is_file(), name
        assert set(EXPECTED[name]) == {"recipients"}
        assert set(EXPECTED[name]["recipients"].values()) <= {"hard", "soft", "delayed"}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda sc: sc.name.removesuffix(".eml"))
def test_recorded_dsn_is_a_postfix_dsn_naming_the_expected_recipients(scenario):
    msg = recorded(scenario.name)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"] == f"Mail Delivery System <MAILER-DAEMON@{MYHOSTNAME}>"
    assert msg["To"] == SENDER
    assert msg["Return-Path"] == "<>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Subject"] == SUBJECTS[scenario.action]
    per_message, _ = delivery_status(msg)
    assert per_message["Reporting-MTA"] == f"dns; {MYHOSTNAME}"
    fields = recipient_fields(msg)
    assert set(fields) == set(EXPECTED[scenario.name]["recipients"])
    assert {f["action"] for f in fields.values()} == {scenario.action}
    assert expectation(msg) == EXPECTED[scenario.name]["recipients"]
    # The returned headers name the original message and its recipients.
    assert original_message_id(msg)
    assert all(r in scenario.recipients for r in fields)


def test_recorded_statuses():
    """What each recorded DSN says, spelled out (the rules of issue #11 are tested on these)."""
    multi = recipient_fields(recorded("postfix_multi_recipient_unknown.eml"))
    assert {r: (f["action"], f["status"]) for r, f in multi.items()} == {
        f"c2@{CUSTOMER_DOMAIN}": ("failed", "5.1.1"), f"c3@{CUSTOMER_DOMAIN}": ("failed", "5.1.1")}
    warn = recipient_fields(recorded("postfix_delay_warning.eml"))
    expired = recipient_fields(recorded("postfix_expired_4_4_1.eml"))
    assert [(f["action"], f["status"]) for f in warn.values()] == [("delayed", "4.4.1")]
    assert [(f["action"], f["status"]) for f in expired.values()] == [("failed", "4.4.1")]
    assert "Connection refused" in next(iter(expired.values()))["diagnostic"]
    # The warning and the expiry are about the same message (sent once, warned about, then given up).
    assert (original_message_id(recorded("postfix_delay_warning.eml"))
            == original_message_id(recorded("postfix_expired_4_4_1.eml")))
    rejected = recipient_fields(recorded("postfix_rejected_5_7_1.eml"))
    assert [(f["action"], f["status"]) for f in rejected.values()] == [("failed", "5.7.1")]
    assert next(iter(rejected.values()))["diagnostic"].startswith("smtp; 554 5.7.1")


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_live_postfix_writes_what_the_corpus_says(postfix: Postfix):
    started = time.monotonic()
    corpus = produce_corpus(postfix, timeout=50)
    elapsed = time.monotonic() - started
    assert set(corpus) == set(EXPECTED)
    for name, raw in corpus.items():
        live, rec = parse(raw), recorded(name)
        assert expectation(live) == EXPECTED[name]["recipients"], name
        assert ({r: (f["action"], f["status"]) for r, f in recipient_fields(live).items()}
                == {r: (f["action"], f["status"]) for r, f in recipient_fields(rec).items()}), name
        assert live["Subject"] == rec["Subject"], name
        assert live["From"] == rec["From"], name
        assert live.get_content_type() == rec.get_content_type() == "multipart/report"
        assert [p.get_content_type() for p in live.walk()] == [p.get_content_type() for p in rec.walk()], name
    # What our classifier reads from the live bounces: each failed recipient with its permanence (issue #11).
    from crm_automation.classify import classify
    from crm_automation.parse import parse as parse_message

    for name, raw in corpus.items():
        got = classify(parse_message(raw))
        assert {f.address: f.permanence.value for f in got.failures} == EXPECTED[name]["recipients"], (
            name, got.evidence)
        assert got.original_message_id == original_message_id(parse(raw)), name
    # The one known customer of the multi-recipient message got it; only the unknown two bounced.
    delivered = list((postfix.directory / "mail" / CUSTOMER_DOMAIN / "c1" / "new").iterdir())
    assert delivered, "c1 did not receive the message"
    assert elapsed < 60, f"the live Postfix scenarios took {elapsed:.1f}s"
