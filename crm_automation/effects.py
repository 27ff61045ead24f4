"""What an inbound activity does to a customer (SPEC §9). Pure: ALL of these rules live here, once (issue #18).

Hard bounces and unsubscribes suppress the address and set the sheet's
status column; replies and lost messages stop sequences — the planner
derives that from the log, so no state is stored for it here. Soft bounces
and delays suppress only when they reach the soft-bounce score (issue #11,
GNU Mailman's bounce score): ``soft_bounce_limit`` distinct messages within
``soft_bounce_days``, counted by the store since the customer's last reply.
Auto-replies change nothing (RFC 3834: an auto-reply is never a reply).

The store decides nothing (issue #18): it is handed :class:`Effect` values
and, for the score, the rule itself (:func:`soft_bounce_score`), because
the count can only be read inside the transaction that records the bounce.
Which email status a suppression reason sets (:func:`status_for`) is
written here only; ``suppress add``, the fetch stage, the send pass and the
relinking of mail to customers added later all ask it.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from crm_automation.models import (
    BounceFailure,
    Classification,
    Correspondence,
    Effect,
    EmailStatus,
    Kind,
    Permanence,
    ScoredBounce,
    SuppressionReason,
)

__all__ = ["Effect", "bounce_effects", "effects", "soft_bounce_score", "status_for"]

# Keyed by text too: a StrEnum member hashes and compares as its value, so a reason read from the log finds it.
_STATUS: dict[str, EmailStatus] = {SuppressionReason.UNSUBSCRIBED: EmailStatus.UNSUBSCRIBED,
                                   SuppressionReason.BOUNCED: EmailStatus.BOUNCED,
                                   SuppressionReason.SOFT_BOUNCES: EmailStatus.BOUNCED}


def status_for(reason: str) -> EmailStatus | None:
    """The email status an address suppressed for ``reason`` gives its customer; None: leave it (``manual``, unknown).

    Why ``manual`` sets none (issue #10): the admin keeps an address off the
    list for their own reasons; the sheet's status column says what the
    address did (bounced, unsubscribed), not what the team decided.
    """
    return _STATUS.get(reason)


def _effect(email: str, reason: SuppressionReason, source: str = "") -> Effect:
    return Effect(email, reason, status_for(reason), source)


def effects(msg: Correspondence, cls: Classification, customer_email: str | None, *,
            sender_is_other_customer: bool = False, source: str = "") -> list[Effect]:
    """The suppressions and status changes one classified message causes (bounces: :func:`bounce_effects`).

    An unsubscribe suppresses the sender's address and the matched
    customer's. ``sender_is_other_customer``: the request carries a send's
    token naming one customer but comes from the address of *another*
    customer (issue #17). The token wins: the customer it names is
    suppressed, and the sender's own customer is left as it is — a
    forwarded mail or a mistyped token never unsubscribes them silently;
    the activity's details name both. ``source`` is recorded with each
    suppression (the activity that caused it).
    """
    if cls.kind is Kind.BOUNCE and not cls.failures and customer_email:
        # a notice naming nobody, matched otherwise
        return [_effect(customer_email.lower(), SuppressionReason.BOUNCED, source)]
    if cls.kind is Kind.UNSUBSCRIBE:
        addr = (msg.from_addr or customer_email) if not sender_is_other_customer else None
        out = [_effect(addr.lower(), SuppressionReason.UNSUBSCRIBED, source)] if addr else []
        if customer_email and customer_email.lower() != (addr or "").lower():
            out.append(_effect(customer_email.lower(), SuppressionReason.UNSUBSCRIBED, source))
        return out
    return []


def bounce_effects(failure: BounceFailure, *, soft_count: int, soft_limit: int, source: str = "") -> list[Effect]:
    """What one failed recipient causes: a hard bounce suppresses at once; soft ones when the score is reached.

    ``soft_count`` is the number of distinct messages to this address that
    soft-bounced or were delayed in the window, this one included;
    ``soft_limit`` 0 turns the score off.
    """
    if failure.permanence is Permanence.HARD:
        return [_effect(failure.address, SuppressionReason.BOUNCED, source)]
    if soft_limit and soft_count >= soft_limit:
        return [_effect(failure.address, SuppressionReason.SOFT_BOUNCES, source)]
    return []


def _scored(failure: BounceFailure, limit: int, days: int, message_id: str, count: int) -> list[Effect]:
    return bounce_effects(failure, soft_count=count, soft_limit=limit,
                          source=f"{count} soft bounces within {days} days (last {message_id})")


def soft_bounce_score(failure: BounceFailure, *, limit: int, days: int, message_id: str) -> ScoredBounce | None:
    """What the store needs to score one soft bounce or delay (issue #11); None when the score is off (0).

    The store counts the address's soft bounces within ``days`` (this one
    included) and applies what the rule returns for that count: nothing
    below ``limit``, the address suppressed (``soft_bounces``) at it.
    """
    if not limit or failure.permanence is Permanence.HARD:
        return None
    return ScoredBounce(failure.address, timedelta(days=days), partial(_scored, failure, limit, days, message_id))
