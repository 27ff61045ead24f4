"""What an inbound activity does to a customer (SPEC §9). Pure.

Hard bounces and unsubscribes suppress the address and set the sheet's
status column; replies and lost messages stop sequences — the planner
derives that from the log, so no state is stored for it here. Soft bounces
and delays suppress only when they reach the soft-bounce score (issue #11,
GNU Mailman's bounce score): ``soft_bounce_limit`` distinct messages within
``soft_bounce_days``, counted by the store since the customer's last reply.
Auto-replies change nothing (RFC 3834: an auto-reply is never a reply).
"""

from __future__ import annotations

from dataclasses import dataclass

from crm_automation.models import BounceFailure, Classification, Correspondence, Kind, Permanence


@dataclass(frozen=True, slots=True)
class Effect:
    """Suppress ``email`` for ``reason`` and, when ``status`` is set, set the customer's email status."""

    email: str
    reason: str
    status: str | None


def effects(msg: Correspondence, cls: Classification, customer_email: str | None, *,
            sender_is_other_customer: bool = False) -> list[Effect]:
    """The suppressions and status changes one classified message causes (bounces: :func:`bounce_effects`).

    An unsubscribe suppresses the sender's address and the matched
    customer's. ``sender_is_other_customer``: the request carries a send's
    token naming one customer but comes from the address of *another*
    customer (issue #17). The token wins: the customer it names is
    suppressed, and the sender's own customer is left as it is — a
    forwarded mail or a mistyped token never unsubscribes them silently;
    the activity's details name both.
    """
    if cls.kind is Kind.BOUNCE and not cls.failures and customer_email:
        return [Effect(customer_email.lower(), "bounced", "bounced")]  # a notice naming nobody, matched otherwise
    if cls.kind is Kind.UNSUBSCRIBE:
        addr = (msg.from_addr or customer_email) if not sender_is_other_customer else None
        out = [Effect(addr.lower(), "unsubscribed", "unsubscribed")] if addr else []
        if customer_email and customer_email.lower() != (addr or "").lower():
            out.append(Effect(customer_email.lower(), "unsubscribed", "unsubscribed"))
        return out
    return []


def bounce_effects(failure: BounceFailure, *, soft_count: int, soft_limit: int) -> list[Effect]:
    """What one failed recipient causes: a hard bounce suppresses at once; soft ones when the score is reached.

    ``soft_count`` is the number of distinct messages to this address that
    soft-bounced or were delayed in the window, this one included;
    ``soft_limit`` 0 turns the score off.
    """
    if failure.permanence is Permanence.HARD:
        return [Effect(failure.address, "bounced", "bounced")]
    if soft_limit and soft_count >= soft_limit:
        return [Effect(failure.address, "soft_bounces", "bounced")]
    return []
