"""What an inbound activity does to a customer (SPEC §9). Pure.

Permanent bounces and unsubscribes suppress the address and set the
sheet's status column; replies stop sequences — the planner derives that
from the log, so no state is stored for it here. Auto-replies and temporary
bounces change nothing (RFC 3834: an auto-reply is never a reply).
"""

from __future__ import annotations

from dataclasses import dataclass

from crm_automation.models import Classification, Kind, ParsedMessage


@dataclass(frozen=True, slots=True)
class Effect:
    """Suppress ``email`` for ``reason`` and, when ``status`` is set, set the customer's email status."""

    email: str
    reason: str
    status: str | None


def effects(msg: ParsedMessage, cls: Classification, customer_email: str | None) -> list[Effect]:
    """The suppressions and status changes one classified message causes."""
    if cls.kind is Kind.BOUNCE and cls.permanent:
        addrs = list(cls.recipients) or ([customer_email] if customer_email else [])
        return [Effect(a.lower(), "bounced", "bounced") for a in addrs]
    if cls.kind is Kind.UNSUBSCRIBE:
        addr = msg.from_addr or customer_email
        out = [Effect(addr.lower(), "unsubscribed", "unsubscribed")] if addr else []
        if customer_email and addr and customer_email.lower() != addr.lower():
            out.append(Effect(customer_email.lower(), "unsubscribed", "unsubscribed"))
        return out
    return []
