"""The fetch stage: source -> parse -> classify -> match -> a decision -> the store applies it.

Each message goes down these layers once and never climbs back (issue #10):
:func:`decide` turns one raw message into a :class:`Decision` value — the
activities to log (one per failed recipient for a bounce), their effects,
an owner notification to queue, or a quarantine record — and
:meth:`~crm_automation.store.repo.Store.apply_inbound` commits it together
with the folder's cursor in one transaction, so a kill at any instant
neither loses nor repeats a message (SPEC §9). Messages are committed in
batches (:meth:`~crm_automation.store.repo.Store.apply_inbound_many`,
issue #13): a batch and the cursor past its last message commit together.

The one reading done before the decision is which of our sends a message
answers or reports on (``sent_message_ids``), which matching needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container, Mapping
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.utils import parseaddr
from typing import NamedTuple

from crm_automation.classify import robot_sender
from crm_automation.effects import bounce_effects, effects, soft_bounce_score
from crm_automation.errors import CrmError
from crm_automation.mailbox.base import MailboxSource
from crm_automation.match import lookup, match
from crm_automation.models import (
    ActivityRecord,
    BounceDetails,
    Cursor,
    Decision,
    InboundDetails,
    Kind,
    Permanence,
    QuarantineRecord,
    RawMessage,
    Reading,
)
from crm_automation.parallel import OrderedPool
from crm_automation.reading import ReadPolicy, Unreadable, read_chunk
from crm_automation.stage import LazyIndex, StageContext, StageResult, address_index, recorded, skipped
from crm_automation.store.repo import Store
from crm_automation.store.sends import SentRef
from crm_automation.tokens import token_in_subject
from crm_automation.workspace import Workspace

log = logging.getLogger("crm_automation")

# Fetched messages are committed in batches of ``mailbox.batch_size``, and at least this often, so a slow
# mailbox never holds the log's write lock for long and a kill re-reads little (issue #13).
COMMIT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class InboundPolicy:
    """The workspace's settings the decisions depend on."""

    max_bytes: int
    unsubscribe_addresses: frozenset[str]
    notify_owner: bool
    soft_bounce_limit: int
    soft_bounce_days: int
    email_field: str | None
    email_fields: tuple[str, ...] = field(default=())
    # Our own addresses -> the setting that names them: never a new customer (issue #17).
    own_addresses: dict[str, str] = field(default_factory=dict)
    # ``new_senders = "add_to_sheet"``: only then is it worth judging who may become a new row.
    add_senders: bool = False
    owner_field: str | None = "owner"  # the mapping's owner role (issue #18): who is told of a reply

    def reading(self, by_email: dict[str, str]) -> ReadPolicy:
        """The part :func:`read` needs, with the customers' addresses."""
        return ReadPolicy(self.max_bytes, self.unsubscribe_addresses, frozenset(by_email))

    @classmethod
    def of(cls, ws: Workspace) -> InboundPolicy:
        """Read from the workspace's config and mapping."""
        ob = ws.cfg.outbound
        unsub: frozenset[str] = frozenset()
        if ob.unsubscribe_mailto:
            addr = parseaddr(ob.unsubscribe_mailto)[1].lower()
            if addr and addr != parseaddr(ob.from_)[1].lower():
                unsub = frozenset({addr})
        owner = ws.mapping.roles.owner
        fields = tuple(f.name for f in ws.mapping.fields.values() if f.type.value == "email" and f.name != owner)
        return cls(max_bytes=ws.cfg.mailbox.max_message_bytes, unsubscribe_addresses=unsub,
                   notify_owner=ob.notify_owner, soft_bounce_limit=ws.cfg.inbound.soft_bounce_limit,
                   soft_bounce_days=ws.cfg.inbound.soft_bounce_days, email_field=ws.email_field, email_fields=fields,
                   own_addresses=_own_addresses(ws), add_senders=ws.cfg.mailbox.new_senders == "add_to_sheet",
                   owner_field=owner)


def _own_addresses(ws: Workspace) -> dict[str, str]:
    """Our addresses (outbound from, reply_to, unsubscribe_mailto, the servers' user names) -> the key naming each."""
    ob, mb = ws.cfg.outbound, ws.cfg.mailbox
    out: dict[str, str] = {}
    accounts = [(f"outbound.accounts[{a.name}].{key}", value) for a in ob.accounts  # issue #20 part 3
                for key, value in (("from", a.from_), ("reply_to", a.reply_to), ("username", a.username))]
    for label, value in (("outbound.from", ob.from_), ("outbound.reply_to", ob.reply_to),
                         ("outbound.unsubscribe_mailto", ob.unsubscribe_mailto),
                         ("mailbox.username", mb.username), ("outbound.username", ob.username), *accounts):
        addr = parseaddr(value)[1].strip().lower() if value else ""
        if "@" in addr:
            out.setdefault(addr, label)
    return out


_Readers = OrderedPool[ReadPolicy, RawMessage, tuple[bytes, int | None], "Read"]


def _bytes_and_size(raw: RawMessage) -> tuple[bytes, int | None]:
    return raw.raw, raw.size


def _weight(raw: RawMessage) -> int:
    return len(raw.raw)


# Lookups a decision may need from the log (reads only).
SentLookup = Callable[[list[str]], dict[str, SentRef]]
CustomerLookup = Callable[[str], Mapping[str, object] | None]
TokenLookup = Callable[[str], SentRef | None]


def _no_token(token: str) -> SentRef | None:
    return None


class _Match(NamedTuple):
    """Whose a message is and how that was found; an unsubscribe's token and the send it names (issue #17).

    A NamedTuple, not a frozen dataclass: made once a message on the fetch loop's hot path, where a frozen
    dataclass's ``__init__`` costs several times more (issue #13's budget).
    """

    key: str | None
    how: str
    token: str | None
    named: SentRef | None


def _match(msg: Reading, by_email: dict[str, str], sent: SentLookup, tokens: TokenLookup) -> _Match:
    cls = msg.cls
    refs = [r for r in (msg.in_reply_to, *msg.references) if r]
    answered = {m: v.customer_key for m, v in sent(refs).items()} if refs else {}
    token = token_in_subject(msg.subject) if cls.kind is Kind.UNSUBSCRIBE else None
    named = tokens(token) if token is not None else None
    key, how = match(msg, cls, by_email, answered, (token, named.customer_key) if token and named else None)
    return _Match(key, how, token, named)


def decide(raw: RawMessage, reading: Reading | Unreadable, src: str, now: datetime, policy: InboundPolicy,
           by_email: dict[str, str], sent: SentLookup, customer: CustomerLookup, new_id: Callable[[], str], *,
           tokens: TokenLookup = _no_token, owners: Container[str] = frozenset()) -> Decision:
    """What to record for one message, given how it reads. The per-item boundary: a failure quarantines it.

    ``tokens`` finds the send an unsubscribe request's token names (issue
    #17); ``owners`` are the owners' addresses in the sheet, who are never
    added to it as customers.
    """
    pos = (raw.folder, raw.uidvalidity, raw.uid, raw.seen_key)
    if isinstance(reading, Unreadable):
        return _quarantined(raw, src, reading.error, by_email, policy.max_bytes)
    msg, cls = reading, reading.cls
    try:
        m = _match(msg, by_email, sent, tokens)
    except CrmError:
        raise  # the log failed: the stage stops, nothing of this message is recorded
    except Exception as e:  # the per-item boundary (SPEC §9)
        log.debug("match failure", exc_info=True)
        return _quarantined(raw, src, f"internal error while reading the message: {type(e).__name__}: {e}",
                            by_email, policy.max_bytes)
    occurred = msg.date or now
    if cls.kind is Kind.BOUNCE and cls.failures:
        acts = _bounce_records(msg, raw.uid, occurred, src, by_email, sent, policy)
        first = next((a.customer_key for a in acts if a.customer_key is not None), None)
        return Decision(*pos, activities=acts, label=Kind.BOUNCE.value if first is not None else "unknown")
    record = _activity_record(msg, m, raw.uid, occurred, src, policy, by_email, customer, new_id)
    sender: tuple[str, str] | None = None
    not_new: tuple[str, str] | None = None
    if m.key is None and cls.kind is Kind.EMAIL_IN and msg.from_addr:
        why = _not_a_customer(msg.from_addr, msg.from_name, msg.bulk, policy, owners) if policy.add_senders else ""
        if why:
            not_new = (msg.from_addr, why)
        else:
            sender = (msg.from_addr, msg.from_name)
    return Decision(*pos, activities=(record,), label=cls.kind.value if m.key is not None else "unknown",
                    new_sender=sender, not_new_sender=not_new)


_EFFECT_KINDS = frozenset({Kind.UNSUBSCRIBE, Kind.BOUNCE})


def _activity_record(msg: Reading, m: _Match, uid: int, occurred: datetime, src: str, policy: InboundPolicy,
                     by_email: dict[str, str], customer: CustomerLookup,
                     new_id: Callable[[], str]) -> ActivityRecord:
    """The one activity of a message that is not a delivery report: its details, effects and owner's note."""
    cls, key = msg.cls, m.key
    c = customer(key) if key is not None else None
    cust_email = c.get(policy.email_field) if (c and policy.email_field) else None
    owner = c.get(policy.owner_field) if c and policy.owner_field else None
    notify = (owner, new_id()) if (policy.notify_owner and key is not None and cls.kind is Kind.EMAIL_IN
                                   and isinstance(owner, str) and "@" in owner) else None
    details, other = _details(msg, m, uid, by_email)
    # Only unsubscribes and bounces cause anything; the others skip formatting a source nobody reads.
    why = f"{cls.kind.value} {msg.message_id}" if cls.kind in _EFFECT_KINDS else ""
    caused = effects(msg, cls, cust_email if isinstance(cust_email, str) else None, sender_is_other_customer=other,
                     source=why)
    return ActivityRecord(
        kind=cls.kind, customer_key=key, message=msg, occurred_at=occurred, source=src, details=details,
        digest=msg.digest, effects=tuple((e, key if key is not None else lookup(by_email, e.email)) for e in caused),
        notify_owner=notify)


def _details(msg: Reading, m: _Match, uid: int, by_email: dict[str, str]) -> tuple[InboundDetails, bool]:
    """The activity's details, and whether an unsubscribe's token names another customer than the sender's."""
    cls = msg.cls
    base = InboundDetails(msg.from_addr, msg.to_addrs, cls.evidence, m.how, cls.recipients, cls.permanent, uid)
    if m.token is None:
        return base, False
    if m.named is None:
        # names no send: handled by the sender's address, as before
        return replace(base, token=m.token, token_unknown=True), False
    # Issue #17: the token names the customer; the sender is recorded beside it, whoever it is.
    named = m.named
    sender_key = lookup(by_email, msg.from_addr)
    other = sender_key is not None and sender_key != named.customer_key
    note = (f"sent from the address of customer {sender_key!r} with the token of customer "
            f"{named.customer_key!r}: only the token's customer is unsubscribed") if other else None
    return replace(base, token=m.token, token_customer=named.customer_key,
                   token_send=f"{named.campaign}/{named.step}", sender_customer=sender_key, note=note), other


def _not_a_customer(addr: str, name: str, bulk: str, policy: InboundPolicy, owners: Container[str]) -> str:
    """Why an unknown sender must not become a new row of the sheet ("" when they may; issue #17).

    ``new_senders = "add_to_sheet"`` adds people who write to us; never our
    own addresses (a copy of our own mail, a colleague testing), the
    owners named in the sheet, list or bulk mail, or robots that no one
    answers (each would then be mailed our campaigns).
    """
    own = policy.own_addresses.get(addr)
    if own is not None:
        return f"our own address ({own})"
    if addr in owners:
        return "an owner in the sheet"
    return bulk or robot_sender(addr, name)


def _bounce_records(msg: Reading, uid: int, occurred: datetime, src: str, by_email: dict[str, str],
                    sent: SentLookup, policy: InboundPolicy) -> tuple[ActivityRecord, ...]:
    """One ``bounce`` activity per failed recipient, each with its own permanence and effects (issue #11).

    Why one each: the timeline, ``report`` and the planner read bounces per
    customer; a report naming two customers used to mark only the first.
    The bounced message (``original_message_id``) tells which send, so the
    activity carries its campaign and step. A hard bounce suppresses at
    once; a soft one is scored by the store with the rule of
    :func:`crm_automation.effects.soft_bounce_score`.
    """
    cls = msg.cls
    original = sent([cls.original_message_id]).get(cls.original_message_id) if cls.original_message_id else None
    out = []
    for f in cls.failures:
        key = lookup(by_email, f.address)
        how = f"failed recipient {f.address}"
        if key is None and original is not None and len(cls.failures) == 1:
            key, how = original.customer_key, f"bounced message {cls.original_message_id}"
        campaign: str | None = None
        step: int | None = None
        if original is not None and original.customer_key == key:
            campaign, step = original.campaign, original.step
        hard = f.permanence is Permanence.HARD
        caused = bounce_effects(f, soft_count=0, soft_limit=0, source=f"{Kind.BOUNCE.value} {msg.message_id}")
        out.append(ActivityRecord(
            kind=Kind.BOUNCE, customer_key=key, message=msg, occurred_at=occurred, source=src,
            digest=f"{msg.digest}:{f.address}", campaign=campaign, step=step,
            details=BounceDetails(msg.from_addr, msg.to_addrs, cls.evidence, how if key else "unknown recipient",
                                  f.address, f.permanence, f.status, hard, cls.recipients, cls.original_message_id,
                                  uid),
            effects=tuple((e, key) for e in caused),
            scored=soft_bounce_score(f, limit=policy.soft_bounce_limit, days=policy.soft_bounce_days,
                                     message_id=msg.message_id)))
    return tuple(out)


def _quarantined(raw: RawMessage, src: str, error: str, by_email: dict[str, str], limit: int) -> Decision:
    from crm_automation.parse import sender_of

    sender = sender_of(raw.raw)
    # A source that tracks names (Maildir) names the file, which a person can find; others the UID (issue #17).
    where = f"file {raw.ref}" if raw.seen_key is not None and raw.ref else f"uid {raw.uid}"
    return Decision(raw.folder, raw.uidvalidity, raw.uid, raw.seen_key, label="quarantined",
                    quarantine=QuarantineRecord(source=f"{src} {where}", raw=raw.raw[:limit], error=error,
                                                from_addr=sender,
                                                customer_key=lookup(by_email, sender) if sender else None,
                                                size=raw.size))


# ``on_new_senders(senders, index)``: adds unknown senders (address -> name) to the sheet; returns how many.
NewSenders = Callable[[dict[str, str], dict[str, str]], int]
Read = Reading | Unreadable


class _Batch:
    """Decided messages waiting for their commit, and what the fetch counted so far.

    A batch and its folder's cursor go to the log in one transaction
    (:meth:`~crm_automation.store.repo.Store.apply_inbound_many`, issue #13);
    only then are the messages moved to ``processed_folder``.
    """

    def __init__(self, source: MailboxSource, store: Store, ctx: StageContext, *, move: bool = True) -> None:
        self.source = source
        self.store = store
        self.ctx = ctx
        self.move = move  # False for the Sent folder: our own mail stays where it is (never processed_folder)
        self.pending: list[tuple[RawMessage, Decision]] = []
        self.counts: dict[str, int] = {"messages": 0, "duplicates": 0, "quarantined": 0, "unknown": 0}
        self.new_senders: dict[str, str] = {}
        self.not_added: dict[str, str] = {}  # unknown senders who are nobody to add: address -> why (issue #17)

    def commit(self) -> None:
        """The pending messages and their cursor in one transaction, then (only then) the moves."""
        if not self.pending:
            return
        logged = self.store.apply_inbound_many([d for _, d in self.pending], self.ctx.clock.now())
        counts = self.counts
        for (_, d), new in zip(self.pending, logged, strict=True):
            # Counted by what this worker's inserts did (issue #20): a message another worker logged or
            # quarantined first is a duplicate here, never a second "quarantined".
            if new and d.quarantine is not None:
                log.warning("%s quarantined: %s", d.quarantine.source, d.quarantine.error)
            kind = d.label if new else "duplicates"
            if new and d.new_sender is not None:
                self.new_senders.setdefault(*d.new_sender)
            elif new and d.not_new_sender is not None:
                self.not_added.setdefault(*d.not_new_sender)
            counts[kind] = counts.get(kind, 0) + 1
            counts["messages"] += 1
        raws = [raw for raw, _ in self.pending]
        self.pending.clear()
        if self.move:
            self.source.mark_processed(raws)


class InboundPass:
    """Reads new mail and logs each message exactly once (or quarantines it whole)."""

    def __init__(self, ws: Workspace, ctx: StageContext, new_id: Callable[[], str]) -> None:
        self.ws = ws
        self.ctx = ctx
        self.store = ctx.store
        self.policy = InboundPolicy.of(ws)
        self.new_id = new_id  # Message-IDs for owner notifications (the composer's)
        self.parallel: dict[str, int] = {}  # OrderedPool settings (tests and the benchmark set them)
        self._customers: dict[str, Mapping[str, object] | None] = {}  # read once a pass (see _customer)

    def index(self) -> LazyIndex:
        """The customers' addresses, loaded on the first message."""
        return address_index(self.store, list(self.policy.email_fields))

    def run(self, on_new_senders: NewSenders | None = None) -> StageResult:
        """The fetch stage. ``on_new_senders(senders, index)`` adds unknown senders to the sheet when asked."""
        self._customers = {}
        with recorded(self.ctx, "fetch") as res:
            source = self.ws.open_mailbox()
            try:
                self._fetch(source, res, on_new_senders)
            finally:
                with suppress(CrmError, OSError):
                    source.close()
        return res

    def _fetch(self, source: MailboxSource, res: StageResult, on_new_senders: NewSenders | None) -> None:
        by_email = self.index()
        adding = self.policy.add_senders and on_new_senders is not None
        # The owners' addresses, read from the log on first use, and only when senders may be added.
        owner = self.ws.mapping.roles.owner
        owners: Container[str] = address_index(self.store, [owner]) if adding and owner else frozenset()
        batch = _Batch(source, self.store, self.ctx)
        bar = self.ctx.progress("fetch", None)
        # Messages are read (parsed, classified) on the other cores when there are many (issue #13); decided
        # and committed here, in mailbox order.
        readers = OrderedPool(read_chunk, lambda: self.policy.reading(by_email), _bytes_and_size, weigh=_weight,
                              **self.parallel)
        try:
            for folder in source.folders():
                # One worker at a time per mailbox folder (issue #20): the others skip it for this cycle.
                with self.ctx.fleet.exclusive(f"fetch {source.name} {folder}") as holder:
                    if holder is None:
                        self._read_folder(source, folder, readers, batch, by_email, owners, bar.advance)
                    else:
                        skipped(res, f"fetch {folder}", holder)
                if self.ctx.stop.is_set():
                    break
        except BaseException:
            # The mailbox dropped (or the stage was interrupted) part-way: keep what was decided before it.
            with suppress(CrmError, OSError):
                batch.commit()
            raise
        finally:
            bar.close()
        if self.ws.cfg.mailbox.read_sent and not self.ctx.stop.is_set():
            # The Sent folder's stage by role, not by name: its name is looked up on the server (issue #21).
            with self.ctx.fleet.exclusive(f"fetch {source.name} :sent") as holder:
                replies = self._read_sent(source, by_email) if holder is None else None
                if holder is not None:
                    skipped(res, "fetch of the Sent folder", holder)
            if replies is not None:
                batch.counts["sent_replies"] = replies
        counts = batch.counts
        if adding and batch.not_added:
            counts["not_added_to_sheet"] = len(batch.not_added)
            for addr, why in sorted(batch.not_added.items()):
                log.info("new sender %s not added to the sheet: %s", addr, why)
        if batch.new_senders and adding and on_new_senders is not None:
            counts["added_to_sheet"] = on_new_senders(batch.new_senders, by_email)
        res.stats = counts

    def _read_folder(self, source: MailboxSource, folder: str, readers: _Readers,
                     batch: _Batch, by_email: dict[str, str], owners: Container[str],
                     advance: Callable[[], None]) -> None:
        """Read, decide and commit one folder's new messages, a batch at a time (issue #13)."""
        size = self.ws.cfg.mailbox.batch_size
        stop = self.ctx.stop
        cursor = self._cursor(source, folder)
        since = time.monotonic()
        # A folder read from its start (first fetch, new UIDVALIDITY) is where a mailbox's years wait.
        first = cursor is None or (source.tracks_names and not cursor.seen)
        for raw, reading in readers.map(source.fetch(folder, cursor, batch=size), eager=first):
            if stop.is_set():
                break
            d = decide(raw, reading, f"{source.name}/{raw.folder}", self.ctx.clock.now(), self.policy, by_email,
                       self.store.sent_message_ids, self._customer, self.new_id, tokens=self.store.send_for_token,
                       owners=owners)
            batch.pending.append((raw, d))
            advance()
            if len(batch.pending) >= size or time.monotonic() - since >= COMMIT_SECONDS:
                batch.commit()
                since = time.monotonic()
        batch.commit()

    def _read_sent(self, source: MailboxSource, by_email: dict[str, str]) -> int | None:
        """Log the team's replies to customers from the Sent folder (issue #21); how many were new.

        None when there is no Sent folder to read. Exactly once as inbound
        mail: each batch of decisions commits with the folder's cursor
        (:func:`crm_automation.outgoing.decide_sent` says what is logged).
        Read after the inbound folders, so a customer's mail and our answer
        fetched in one pass find each other. Messages are parsed here, not on
        the other cores: a Sent folder grows by the team's own hand.
        """
        from crm_automation.errors import MessageError
        from crm_automation.outgoing import decide_sent
        from crm_automation.parse import parse

        folder = source.sent_folder()
        if folder is None:
            return None
        if folder in source.folders():
            log.warning("%s is both an inbound folder ([mailbox] folders) and the Sent folder; it is read as "
                        "inbound mail only", folder)
            return None
        batch = _Batch(source, self.store, self.ctx, move=False)
        size, stop = self.ws.cfg.mailbox.batch_size, self.ctx.stop
        since = time.monotonic()
        for raw in source.fetch(folder, self._cursor(source, folder), batch=size):
            if stop.is_set():
                break
            try:
                msg = parse(raw.raw, max_bytes=self.policy.max_bytes)
            except MessageError:
                msg = None  # ours and unreadable: nothing to quarantine, the cursor moves past it
            except Exception:  # the per-item boundary (SPEC §9), as for inbound mail
                log.debug("sent message %s not readable", raw.ref or raw.uid, exc_info=True)
                msg = None
            batch.pending.append((raw, decide_sent(raw, msg, f"{source.name}/{folder}", self.ctx.clock.now(),
                                                   by_email, self.store.inbound_customers,
                                                   self.store.sent_message_ids)))
            if len(batch.pending) >= size or time.monotonic() - since >= COMMIT_SECONDS:
                batch.commit()
                since = time.monotonic()
        batch.commit()
        return batch.counts.get(Kind.REPLY_OUT.value, 0)

    def _cursor(self, source: MailboxSource, folder: str) -> Cursor | None:
        uv = source.uidvalidity(folder)
        stored = self.store.mailbox_cursor(folder)
        if source.tracks_names:
            return Cursor(uv, stored.last_uid if stored else 0, self.store.maildir_seen(folder))
        if stored is not None and stored.uidvalidity == uv:
            return stored
        if stored is not None:
            log.warning("%s: UIDVALIDITY changed (%s -> %s): re-reading the folder; messages already "
                        "logged are recognised by Message-ID", folder, stored.uidvalidity, uv)
        return None

    def _customer(self, key: str) -> Mapping[str, object] | None:
        # Read once a pass: a fetch changes no customer's data (only email_status, which decide() does
        # not read), and the same few customers write most of a mailbox.
        if key not in self._customers:
            c = self.store.customer(key)
            self._customers[key] = c.data if c is not None else None
        return self._customers[key]
