"""Which SMTP account sends a message (issue #20, part 3): a campaign's pin, else weighted rendezvous hashing.

Pure: no I/O, no clock, no state. Every worker, on every pass, names the
same account for the same message, so nothing has to be stored or agreed:

* a campaign with ``account = "NAME"`` in campaigns.toml sends every step
  through that account (``"default"``: ``[outbound]``'s own server);
* otherwise the message's *routing key* picks the account by weighted
  rendezvous (highest-random-weight) hashing, Thaler & Ravishankar 1998
  ("A name-based mapping scheme for rendezvous"); weights as in Schindelhauer
  & Schomaker 2005: each account scores ``weight / -ln(u)``, where ``u`` in
  (0, 1) is a stable hash of (account name, key), and the highest score wins.
  An account is chosen for a share of the keys proportional to its weight.

Why rendezvous hashing and not ``hash(key) % n`` (Mautic's ``MOD(lead_id,
threads)``): a customer always hears from the same address (replies thread,
the customer sees one sender, a provider sees a steady pattern), and adding
or removing an account moves only the customers it takes or gives: every
other customer's best score is unchanged. The hash is BLAKE2b over the
UTF-8 text, never Python's ``hash()``, which is salted per process.

The weight is the account's ``max_per_day`` (what the provider lets it
send); 0 (no limit) counts as :data:`UNLIMITED_WEIGHT`, a fixed large
number, so an unlimited relay takes most customers and a new limited
account still moves only its share. Changing a ``max_per_day`` moves some
customers between that account and the others (fewer, the smaller the
change).

The routing key is the customer's key for campaign steps; for owner
notifications and digests, which go to a member of the team, it is the
owner's address (lower case), so each owner hears from one address too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b

from crm_automation.compose import Sender
from crm_automation.config import DEFAULT_ACCOUNT, AccountSection, OutboundSection
from crm_automation.store.sends import SendKind, SendRow

UNLIMITED_WEIGHT = 1_000_000  # an account with max_per_day = 0: far above any provider's daily limit
_SCALE = float(1 << 64)


@dataclass(frozen=True, slots=True)
class Account:
    """One SMTP account as the send pass uses it: its name, sender and limits, and its server's section.

    ``name`` None is ``[outbound]``'s own server (``sends.account`` NULL,
    shown as ``"default"``).
    """

    name: str | None
    sender: Sender
    per_minute: int
    per_day: int
    server: OutboundSection | AccountSection

    @property
    def label(self) -> str:
        """How messages and reports name it."""
        return self.name or DEFAULT_ACCOUNT

    @property
    def weight(self) -> int:
        """Its share of the customers: ``max_per_day``, or :data:`UNLIMITED_WEIGHT` when it has none."""
        return self.per_day or UNLIMITED_WEIGHT


def accounts_of(ob: OutboundSection) -> tuple[Account, ...]:
    """The accounts that send: ``[outbound]``'s own (unless only listed accounts do), then each listed one."""
    out: list[Account] = []
    if ob.sends_itself:
        out.append(Account(None, Sender.of(ob.from_, ob.reply_to), ob.max_per_minute, ob.max_per_day, ob))
    for a in ob.accounts:
        sender = Sender.of(a.from_ or ob.from_, a.reply_to if a.reply_to is not None else ob.reply_to)
        out.append(Account(a.name, sender, a.max_per_minute, a.max_per_day, a))
    return tuple(out)


def score(key: str, name: str, weight: int) -> float:
    """The account's weighted rendezvous score for ``key`` (higher wins)."""
    h = int.from_bytes(blake2b(f"{name}\x00{key}".encode(), digest_size=8).digest(), "big")
    u = (h + 0.5) / _SCALE  # in (0, 1): never 0 (log) nor 1 (a zero denominator)
    return weight / -math.log(u)


def choose(key: str, accounts: Sequence[Account]) -> Account:
    """The account that sends to ``key`` among ``accounts`` (ties, practically never: by name)."""
    return max(accounts, key=lambda a: (score(key, a.label, a.weight), a.label))


def routing_key(s: SendRow) -> str:
    """What a send is hashed on: the customer's key, or the owner's address for the team's own mail."""
    if s.kind is SendKind.CAMPAIGN_STEP:
        return s.customer_key
    return (s.email or s.customer_key).strip().lower()


class Router:
    """Names the account of each send: the campaign's pin, else :func:`choose` on its :func:`routing_key`."""

    __slots__ = ("accounts", "by_name", "pins")

    def __init__(self, accounts: Sequence[Account], pins: Mapping[str, str]) -> None:
        """``pins``: campaign id -> the account name it names (validated with campaigns.toml)."""
        self.accounts = tuple(accounts)
        self.by_name = {a.label: a for a in self.accounts}
        self.pins = pins

    def account_for(self, s: SendRow) -> Account:
        """The account ``s`` goes through."""
        if len(self.accounts) == 1:
            return self.accounts[0]
        pinned = self.pins.get(s.campaign)
        if pinned is not None and (a := self.by_name.get(pinned)) is not None:
            return a
        return choose(routing_key(s), self.accounts)
