"""Typed records (issue #18): one details record per activity kind, enums, one read message, the rules in one place.

The JSON texts below are what earlier versions wrote into ``activities.details``:
they must read back through the records, and the records must write them again
byte for byte (the timeline's ``--json`` shows the stored text).
"""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta

import pytest

from crm_automation.effects import bounce_effects, soft_bounce_score, status_for
from crm_automation.models import (
    ActivityRecord,
    BounceDetails,
    BounceFailure,
    Classification,
    CustomerAddedDetails,
    CustomerRemovedDetails,
    Decision,
    EmailStatus,
    FieldChangedDetails,
    InboundDetails,
    Kind,
    NoDetails,
    Permanence,
    Reading,
    SendFailedDetails,
    SuppressionReason,
    Trigger,
    details_of,
)
from crm_automation.reading import ReadPolicy, Unreadable, read_chunk
from crm_automation.store.repo import Store

T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
_encode = json.JSONEncoder(ensure_ascii=False).encode

# (kind, the text an earlier version wrote, the record it reads as)
WRITTEN = [
    (Kind.EMAIL_IN,
     '{"from": "a@x.com", "to": ["sales@example.com"], "evidence": "no sign", "matched_by": "sender address", '
     '"recipients": [], "permanent": false, "uid": 7}',
     InboundDetails("a@x.com", ("sales@example.com",), "no sign", "sender address", (), False, 7)),
    (Kind.UNSUBSCRIBE,
     '{"from": "b@x.com", "to": [], "evidence": "退订", "matched_by": "unsubscribe token t1", "recipients": [], '
     '"permanent": false, "uid": 3, "token": "t1", "token_customer": "a@x.com", "token_send": "welcome/0", '
     '"sender_customer": "b@x.com", "note": "sent from the address of customer \'b@x.com\' with the token of '
     'customer \'a@x.com\': only the token\'s customer is unsubscribed"}',
     InboundDetails("b@x.com", (), "退订", "unsubscribe token t1", (), False, 3, token="t1", token_customer="a@x.com",
                    token_send="welcome/0", sender_customer="b@x.com",
                    note="sent from the address of customer 'b@x.com' with the token of customer 'a@x.com': only "
                         "the token's customer is unsubscribed")),
    (Kind.UNSUBSCRIBE,
     '{"from": "b@x.com", "to": [], "evidence": "TD", "matched_by": "sender address", "recipients": [], '
     '"permanent": false, "uid": 4, "token": "nope", "token_unknown": true}',
     InboundDetails("b@x.com", (), "TD", "sender address", (), False, 4, token="nope", token_unknown=True)),
    (Kind.BOUNCE,
     '{"from": "mailer-daemon@mx.x", "to": ["sales@example.com"], "evidence": "DSN", "matched_by": '
     '"failed recipient a@x.com", "recipient": "a@x.com", "permanence": "soft", "status": "4.2.2", '
     '"permanent": false, "recipients": ["a@x.com", "c@x.com"], "original_message_id": null, "uid": 9}',
     BounceDetails("mailer-daemon@mx.x", ("sales@example.com",), "DSN", "failed recipient a@x.com", "a@x.com",
                   Permanence.SOFT, "4.2.2", False, ("a@x.com", "c@x.com"), None, 9)),
    (Kind.FIELD_CHANGED, '{"field": "stage", "old": "意向", "new": "报价", "row": 5}',
     FieldChangedDetails("stage", "意向", "报价", 5)),
    (Kind.CUSTOMER_ADDED, '{"row": 5, "returned": true}', CustomerAddedDetails(5, returned=True)),
    (Kind.CUSTOMER_REMOVED, '{"note": "row no longer in the sheet; history kept"}', CustomerRemovedDetails()),
    (Kind.SEND_FAILED, '{"error": "550 5.1.1 no such user"}', SendFailedDetails("550 5.1.1 no such user")),
    (Kind.EMAIL_OUT, "{}", NoDetails()),
]


@pytest.mark.parametrize(("kind", "text", "record"), WRITTEN, ids=[f"{k.value}-{i}" for i, (k, _, _) in
                                                                   enumerate(WRITTEN)])
def test_details_read_back_through_their_record_and_are_written_byte_for_byte(kind, text, record):
    assert details_of(kind, json.loads(text)) == record
    assert _encode(record.to_dict()) == text


def test_details_from_before_a_key_existed_read_with_its_default():
    """A bounce from before issue #11 names every recipient and no permanence; a customer_added from SQLite."""
    old = details_of(Kind.BOUNCE, {"from": "m@x", "to": [], "evidence": "DSN", "matched_by": "x",
                                   "recipients": ["a@x.com", "b@x.com"], "permanent": True, "uid": 1})
    assert isinstance(old, InboundDetails) and old.recipients == ("a@x.com", "b@x.com") and old.permanent
    rcpt = details_of(Kind.BOUNCE, {"recipient": "a@x.com", "permanence": "hard", "permanent": True,
                                    "status": "5.1.1", "evidence": "refused at RCPT: 550", "recipients": ["a@x.com"],
                                    "original_message_id": "<m@x>"})
    assert isinstance(rcpt, BounceDetails) and rcpt.addresses == ("a@x.com",) and rcpt.from_addr is None
    assert rcpt.permanence is Permanence.HARD
    assert details_of(Kind.CUSTOMER_ADDED, json.loads('{"row":2}')) == CustomerAddedDetails(2)
    assert details_of(Kind.EMAIL_IN, {}) == InboundDetails("", (), "", None)


def test_statuses_reasons_and_triggers_are_str_enums_stored_as_the_same_text():
    assert [s.value for s in EmailStatus] == ["ok", "bounced", "unsubscribed"]
    assert [r.value for r in SuppressionReason] == ["manual", "unsubscribed", "bounced", "soft_bounces"]
    assert [t.value for t in Trigger] == ["new", "change", "at"]
    assert json.dumps({"s": EmailStatus.BOUNCED, "r": SuppressionReason.SOFT_BOUNCES}) == \
        '{"s": "bounced", "r": "soft_bounces"}'


def test_the_reason_to_status_rule_is_one_table():
    assert status_for(SuppressionReason.UNSUBSCRIBED) is EmailStatus.UNSUBSCRIBED
    assert status_for("bounced") is EmailStatus.BOUNCED  # as read from the log
    assert status_for(SuppressionReason.SOFT_BOUNCES) is EmailStatus.BOUNCED
    assert status_for(SuppressionReason.MANUAL) is None
    assert status_for("written by hand") is None


def test_the_soft_bounce_score_is_a_rule_of_the_core_the_store_only_counts():
    soft = BounceFailure("a@x.com", Permanence.SOFT, "4.2.2")
    assert soft_bounce_score(soft, limit=0, days=30, message_id="<b@x>") is None  # the score is off
    assert soft_bounce_score(BounceFailure("a@x.com", Permanence.HARD), limit=3, days=30, message_id="<b@x>") is None
    scored = soft_bounce_score(soft, limit=3, days=30, message_id="<b@x>")
    assert scored is not None and scored.address == "a@x.com" and scored.window == timedelta(days=30)
    assert scored.rule(2) == []
    (eff,) = scored.rule(3)
    assert (eff.email, eff.reason, eff.status) == ("a@x.com", SuppressionReason.SOFT_BOUNCES, EmailStatus.BOUNCED)
    assert eff.source == "3 soft bounces within 30 days (last <b@x>)"
    assert bounce_effects(soft, soft_count=3, soft_limit=3) == scored.rule(3)


def _bounce(mid: str, scored_limit: int, digest: str) -> Decision:
    cls = Classification(Kind.BOUNCE, "DSN", (BounceFailure("a@x.com", Permanence.SOFT, "4.2.2"),))
    msg = Reading(mid, "mailer-daemon@mx.x", "", (), "Delayed", None, None, (), "", cls, digest)
    failure = cls.failures[0]
    rec = ActivityRecord(
        kind=Kind.BOUNCE, customer_key="a@x.com", message=msg, occurred_at=T0, source="maildir/INBOX",
        details=BounceDetails(msg.from_addr, (), "DSN", "failed recipient a@x.com", "a@x.com", Permanence.SOFT,
                              "4.2.2", False, ("a@x.com",), None, 1),
        digest=f"{digest}:a@x.com",
        scored=soft_bounce_score(failure, limit=scored_limit, days=30, message_id=mid))
    return Decision("INBOX", 1, 1, None, activities=(rec,))


def test_the_store_applies_what_the_rule_decides_for_its_count(log_location):
    store = Store.open(log_location)  # SQLite, then PostgreSQL (issue #20)
    store.apply_sync("s.csv", [], {}, {}, T0)
    store.conn.execute("INSERT INTO customers (key, row, data, first_seen, email_status, present) "
                       "VALUES ('a@x.com', 2, '{}', '2026-11-01T00:00:00Z', 'ok', 1)")
    # Two soft bounces in one batch: the count read for the second includes the first (same transaction).
    assert store.apply_inbound_many([_bounce("<b1@x>", 2, "d1"), _bounce("<b2@x>", 2, "d2")], T0) == [True, True]
    assert store.suppressions()["a@x.com"].reason is SuppressionReason.SOFT_BOUNCES
    assert store.suppressions()["a@x.com"].source == "2 soft bounces within 30 days (last <b2@x>)"
    assert store.customer("a@x.com").email_status is EmailStatus.BOUNCED
    store.close()


def test_relinking_asks_the_core_which_status_a_reason_gives(log_location):
    store = Store.open(log_location)  # SQLite, then PostgreSQL (issue #20)
    store.suppress("new@x.com", SuppressionReason.MANUAL, "cli", T0)
    store.add_activity(kind="email_in", occurred_at=T0, now=T0, message_id="<m@x>", digest="d",
                       details=InboundDetails("new@x.com", (), "no sign", "unknown sender"))
    store.conn.execute("INSERT INTO customers (key, row, data, first_seen, email_status, present) "
                       "VALUES ('new@x.com', 2, '{}', '2026-11-01T00:00:00Z', 'ok', 1)")
    asked: list[str] = []

    def rule(reason: str) -> EmailStatus | None:
        asked.append(reason)
        return EmailStatus.UNSUBSCRIBED  # not today's rule for "manual": the store must not have its own

    assert store.relink_inbound({"new@x.com": "new@x.com"}, T0, status_of=rule) == 1
    assert asked == ["manual"]
    assert store.customer("new@x.com").email_status is EmailStatus.UNSUBSCRIBED
    (act,) = store.timeline("new@x.com")
    assert isinstance(act.details, InboundDetails)
    assert act.details.matched_by == "address, when the customer was added (2026-11-27T02:00:00Z)"
    store.close()


def test_a_read_message_has_one_shape_here_and_across_processes():
    """No positional tuple: a helper process hands back the Reading itself (it pickles as plain values)."""
    raw = (b"From: Alice <alice@example.org>\r\nTo: sales@example.com\r\nSubject: Re: quote\r\n"
           b"Message-ID: <r1@example.org>\r\nDate: Fri, 27 Nov 2026 10:00:00 +0800\r\n\r\nFine, thanks.\r\n")
    policy = ReadPolicy(1 << 20, frozenset(), frozenset({"alice@example.org"}))
    (r, bad) = read_chunk(policy, [(raw, None), (b"x" * 10, 1 << 30)])
    assert isinstance(r, Reading) and isinstance(bad, Unreadable)
    assert (r.from_addr, r.subject, r.reply.strip(), r.cls.kind) == ("alice@example.org", "Re: quote",
                                                                      "Fine, thanks.", Kind.EMAIL_IN)
    again = pickle.loads(pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL))
    assert again == r and type(again) is Reading
    assert pickle.loads(pickle.dumps(bad)) == bad
