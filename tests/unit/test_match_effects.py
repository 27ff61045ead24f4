"""Matching a message to a customer, and what an inbound activity does (SPEC §9): pure, values in and out."""

from __future__ import annotations

from crm_automation.effects import Effect, bounce_effects, effects
from crm_automation.match import match
from crm_automation.models import BounceFailure, Classification, Kind, ParsedMessage, Permanence


def msg(**kw) -> ParsedMessage:
    fields = {"message_id": "<m@x>", "from_addr": "alice@example.org", "from_name": "Alice",
              "to_addrs": ("sales@example.com",), "subject": "Re: Offer", "date": None, "in_reply_to": None,
              "references": (), "headers": {}, "text": "Fine.", "reply": "Fine.", "raw": b""}
    fields.update(kw)
    return ParsedMessage(**fields)


REPLY = Classification(Kind.EMAIL_IN, "no sign")
INDEX = {"alice@example.org": "alice@example.org", "bob@example.net": "k-bob"}


def test_sender_address_first_then_our_message_it_answers_then_unknown():
    assert match(msg(), REPLY, INDEX, {}) == ("alice@example.org", "sender address")
    colleague = msg(from_addr="colleague@example.org", in_reply_to="<crm.1@example.com>")
    assert match(colleague, REPLY, INDEX, {"<crm.1@example.com>": "k-bob"}) == ("k-bob", "reply to <crm.1@example.com>")
    # the newest reference wins when In-Reply-To names none of ours
    refs = msg(from_addr="x@y.z", references=("<crm.old@example.com>", "<crm.new@example.com>"))
    assert match(refs, REPLY, INDEX, {"<crm.old@example.com>": "a", "<crm.new@example.com>": "b"})[0] == "b"
    assert match(msg(from_addr="stranger@else.where"), REPLY, INDEX, {}) == (None, "unknown sender")


def test_a_bounce_belongs_to_the_failed_recipient_not_the_mailer_daemon():
    cls = Classification(Kind.BOUNCE, "DSN", (BounceFailure("bob@example.net", Permanence.HARD, "5.1.1"),))
    assert match(msg(from_addr="mailer-daemon@mx.example.net"), cls, INDEX, {}) == (
        "k-bob", "failed recipient bob@example.net")


def test_a_hard_bounce_suppresses_at_once_soft_ones_only_at_the_score():
    hard = BounceFailure("bob@example.net", Permanence.HARD, "5.1.1")
    soft = BounceFailure("bob@example.net", Permanence.SOFT, "4.4.7")
    delayed = BounceFailure("bob@example.net", Permanence.DELAYED, "4.4.1")
    assert bounce_effects(hard, soft_count=0, soft_limit=3) == [Effect("bob@example.net", "bounced", "bounced")]
    for f in (soft, delayed):
        assert bounce_effects(f, soft_count=2, soft_limit=3) == []
        assert bounce_effects(f, soft_count=3, soft_limit=3) == [
            Effect("bob@example.net", "soft_bounces", "bounced")]
        assert bounce_effects(f, soft_count=99, soft_limit=0) == []  # 0 turns the score off


def test_an_unsubscribe_suppresses_the_sender_and_the_customer_it_was_matched_to():
    cls = Classification(Kind.UNSUBSCRIBE, "short reply 'TD'")
    assert effects(msg(), cls, "alice@example.org") == [Effect("alice@example.org", "unsubscribed", "unsubscribed")]
    # a colleague answering for the customer: both addresses
    assert effects(msg(from_addr="colleague@example.org"), cls, "Alice@Example.org") == [
        Effect("colleague@example.org", "unsubscribed", "unsubscribed"),
        Effect("alice@example.org", "unsubscribed", "unsubscribed")]


def test_replies_and_auto_replies_change_nothing_here():
    assert effects(msg(), REPLY, "alice@example.org") == []
    assert effects(msg(), Classification(Kind.AUTO_REPLY, "Auto-Submitted"), "alice@example.org") == []


# -- issue #17: internationalized domains (RFC 6530) ----------------------------------------------------------


def test_an_internationalized_domain_matches_in_either_spelling():
    index = {"张三@例子.中国": "k-zhang", "li@xn--fiqs8s.example": "k-li"}
    assert match(msg(from_addr="张三@xn--fsqu00a.xn--fiqs8s"), REPLY, index, {}) == ("k-zhang", "sender address")
    assert match(msg(from_addr="li@中国.example"), REPLY, index, {}) == ("k-li", "sender address")
    bounce = Classification(Kind.BOUNCE, "DSN", (BounceFailure("张三@xn--fsqu00a.xn--fiqs8s", Permanence.HARD),))
    assert match(msg(from_addr="mailer-daemon@mx.example.net"), bounce, index, {})[0] == "k-zhang"
    # A domain IDNA refuses is compared as written, and never raises.
    assert match(msg(from_addr="x@bad..例子"), REPLY, index, {}) == (None, "unknown sender")


# -- issue #17: unsubscribe tokens -----------------------------------------------------------


UNSUB = Classification(Kind.UNSUBSCRIBE, "subject 'unsubscribe crm.1'")


def test_an_unsubscribe_token_wins_over_the_sender_address():
    # bob@example.net is customer k-bob, but the request carries the token of alice's send.
    assert match(msg(from_addr="bob@example.net"), UNSUB, INDEX, {}, ("crm.1", "alice@example.org")) == (
        "alice@example.org", "unsubscribe token crm.1")
    # A token on anything but an unsubscribe request changes nothing.
    assert match(msg(from_addr="bob@example.net"), REPLY, INDEX, {}, ("crm.1", "alice@example.org")) == (
        "k-bob", "sender address")


def test_the_token_s_customer_is_suppressed_and_another_customer_sender_is_not():
    assert effects(msg(from_addr="bob@example.net"), UNSUB, "alice@example.org", sender_is_other_customer=True) == [
        Effect("alice@example.org", "unsubscribed", "unsubscribed")]
    # An unknown sender (another account of the customer) is suppressed too, as before.
    assert effects(msg(from_addr="alice.private@example.net"), UNSUB, "alice@example.org") == [
        Effect("alice.private@example.net", "unsubscribed", "unsubscribed"),
        Effect("alice@example.org", "unsubscribed", "unsubscribed")]
