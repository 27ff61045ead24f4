"""The log's public surface, one typed protocol per part: what the stages and use cases may ask of a store.

Why (issue #18): the next backend (PostgreSQL, issue #20) implements these,
and a stage written against them cannot reach into SQLite. They describe
today's :class:`~crm_automation.store.repo.Store` method for method (mypy
checks that it satisfies :class:`LogStore`, see ``store/repo.py``); a
method added to a part is added here too (``tests/unit/test_store_protocols.py``
fails otherwise).

The parts, and what each records:

- :class:`Log`: the file or database itself — transactions (the rule is in
  ``store/__init__.py``), its identity and ``meta`` values.
- :class:`Customers`: the sheet's rows as last synced, each sync's changes,
  the sheet's digest, email status, the address index, re-keying.
- :class:`Activities`: everything that happened to a customer, and the
  quarantine; reading the history the planner needs.
- :class:`FetchedMail`: a fetched message's decision applied with its
  folder's cursor (exactly once), mail linked to customers added later.
- :class:`Sends`: the exactly-once send lifecycle and the campaigns' plan state.
- :class:`Claims`: which worker hands a send over, its ``sending`` mark and the rate limits' counts (issue #20).
- :class:`Planning`: what the plan part asks: who can be due now, and those candidates' history (issue #23).
- :class:`Suppressions`: the suppression list.
- :class:`Tracking`: tracked links, clicks and opens (issue #19).
- :class:`Reports`: reads across tables (funnel, last contact) and stage runs.
- :class:`Workers`: the workers sharing the log and the sends they hold (issue #20).
- :class:`Contacts`: per customer the latest mail each way and when the
  stage last changed; customer mail not yet followed by ours (issue #21).

The store decides nothing: every rule arrives as a value or a pure
function (:class:`~crm_automation.models.Effect`,
:class:`~crm_automation.models.ScoredBounce`, ``status_of``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

from crm_automation.models import (
    Cursor,
    Customer,
    Decision,
    EmailStatus,
    InboundDetails,
    SendStatus,
    StepState,
    SuppressionReason,
)
from crm_automation.store.activities import Activity, DetailsIn, InboundEvent, QuarantinedContact
from crm_automation.store.claims import Rate, RecentHandOvers
from crm_automation.store.contact import ContactTimes, InboundMail, SalesRow
from crm_automation.store.customers import RekeyCounts, SheetState, StoredCustomer, SyncStats
from crm_automation.store.due import Events, PlanMark
from crm_automation.store.pipeline import MailRow, MoveRow, NamedRow
from crm_automation.store.reports import (
    DayCounts,
    FunnelRow,
    LastTimes,
    QuarantinedBytes,
    QuarantineRow,
    QueueDepth,
    ReplyRow,
    RunRow,
)
from crm_automation.store.sends import Claim, Gate, SendRow, Sent, SentRef
from crm_automation.store.suppressions import Suppression
from crm_automation.store.tracking import TokenSend
from crm_automation.store.workers import WorkerRow


class Log(Protocol):
    """The log as a whole: one atomic unit at a time, its identity, small ``meta`` values."""

    def transaction(self) -> AbstractContextManager[None]:
        """Everything inside commits together or not at all (nested: a savepoint)."""
        ...

    def check_file(self) -> None:
        """Raise ConfigError when the log was deleted or replaced under a running worker."""
        ...

    def same_file(self) -> bool:
        """Whether the log's path still names the file this connection opened (a kept connection follows it)."""
        ...

    def not_waiting(self) -> AbstractContextManager[None]:
        """Inside, a write that finds the log busy fails at once (LogBusyError); the caller waits its own way."""
        ...

    def log_id(self) -> str:
        """The identity written into the log when it was created."""
        ...

    def schema_version(self) -> int:
        """How many of the named migrations the log has (``check`` reports it; issue #20)."""
        ...

    def meta(self, key: str) -> str | None:
        """One ``meta`` value (None when unset)."""
        ...

    def set_meta(self, key: str, value: str | None) -> None:
        """Set (None: delete) one ``meta`` value."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


class Customers(Protocol):
    """Customers as the sheet last showed them, and what each sync changed."""

    def key_field(self) -> str | None:
        """The mapping field the customer keys were built from (None: not recorded yet)."""
        ...

    def set_key_field(self, name: str) -> None:
        """Record the mapping field the customer keys are built from."""
        ...

    def has_customers(self) -> bool:
        """Whether any customer was ever recorded."""
        ...

    def rekey(self, moves: Sequence[tuple[str, str, object]], key_field: str, *,
              dry_run: bool = False) -> RekeyCounts:
        """Give customers new keys in every table, in one transaction."""
        ...

    def row_hashes(self) -> dict[str, str]:
        """Row hash -> key of customers present at the last sync."""
        ...

    def customers(self, *, present_only: bool = True) -> dict[str, StoredCustomer]:
        """All customers (present in the sheet at the last sync, unless asked otherwise)."""
        ...

    def customer(self, key: str) -> StoredCustomer | None:
        """One customer by key, present or not."""
        ...

    def apply_sync(self, source: str, changed: Sequence[Customer], unchanged: dict[str, int],
                   hashes: dict[str, str], now: datetime, *, complete: bool = True) -> SyncStats:
        """Record new customers and field changes; mark rows that disappeared."""
        ...

    def sheet_state(self, source: str) -> SheetState | None:
        """What the last complete sync of ``source`` recorded."""
        ...

    def set_sheet_state(self, source: str, fingerprint: str | None, rows: int, problems: Sequence[str],
                        now: datetime, notes: Sequence[str] | None = None, rejected: int | None = None) -> None:
        """Remember the sheet's digest after a complete sync (None forgets it)."""
        ...

    def set_email_status(self, key: str, status: EmailStatus) -> None:
        """Set one customer's email status."""
        ...

    def set_status_by_email(self, emails: Iterable[str], status: EmailStatus) -> int:
        """Set the email status of the customers keyed by these addresses."""
        ...

    def keys_by_email(self, email_fields: Iterable[str]) -> dict[str, str]:
        """Address -> customer key, over the key and every other email field."""
        ...


class Activities(Protocol):
    """What happened to each customer, and the messages kept in quarantine."""

    def add_activity(self, *, kind: str, occurred_at: datetime, now: datetime, customer_key: str | None = None,
                     subject: str | None = None, body: str | None = None, message_id: str | None = None,
                     in_reply_to: str | None = None, campaign: str | None = None, step: int | None = None,
                     source: str | None = None, details: DetailsIn = None,
                     digest: str | None = None) -> int | None:
        """Insert one activity; its id, or None for an inbound message already logged."""
        ...

    def quarantine(self, *, source: str, raw: bytes, error: str, now: datetime, from_addr: str | None = None,
                   customer_key: str | None = None, size: int | None = None) -> bool:
        """Keep a message that could not be understood; False if it is there already."""
        ...

    def soft_bounce_count(self, address: str, key: str | None, since: datetime) -> int:
        """Distinct messages to ``address`` that soft-bounced or were delayed since ``since`` (issue #11)."""
        ...

    def quarantined_contacts(self) -> list[QuarantinedContact]:
        """Quarantined messages from known customers, oldest first."""
        ...

    def activity(self, activity_id: int) -> Activity | None:
        """One activity by id."""
        ...

    def timeline(self, key: str) -> list[Activity]:
        """One customer's activities, oldest first."""
        ...

    def inbound_history(self) -> list[InboundEvent]:
        """Inbound activities matched to a customer (what the planner's rules read)."""
        ...

    def field_changes(self, field_name: str) -> list[tuple[str, object, datetime]]:
        """(customer, new value, when) for each change of one field."""
        ...


class FetchedMail(Protocol):
    """Fetched mail: each message's decision and its folder's cursor, exactly once."""

    def mailbox_cursor(self, folder: str) -> Cursor | None:
        """Where ``folder`` was read up to, or None before the first fetch."""
        ...

    def set_cursor(self, folder: str, uidvalidity: int, last_uid: int, now: datetime) -> None:
        """Move a folder's cursor."""
        ...

    def maildir_seen(self, folder: str) -> frozenset[str]:
        """Names of the Maildir files of ``folder`` already logged or quarantined."""
        ...

    def send_for_token(self, token: str) -> SentRef | None:
        """The send an unsubscribe token names (issue #17), or None."""
        ...

    def record_unsubscribe(self, email: str, source: str, now: datetime, *, customer_key: str, campaign: str,
                           step: int, status: EmailStatus | None, details: InboundDetails) -> bool:
        """Suppress an unsubscribe link's address, set the status, log the activity, as one unit (issue #19).

        False, and nothing written, when the address was on the list already.
        """
        ...

    def apply_inbound(self, d: Decision, now: datetime) -> bool:
        """Record one message's decision and move its folder's cursor, in one transaction."""
        ...

    def apply_inbound_many(self, decisions: Sequence[Decision], now: datetime) -> list[bool]:
        """Record several messages' decisions and their folders' cursors, in one transaction."""
        ...

    def relink_inbound(self, index: dict[str, str], now: datetime, *,
                       status_of: Callable[[str], EmailStatus | None]) -> int:
        """Attach mail logged without a customer to customers added since (issue #9)."""
        ...


class Sends(Protocol):
    """The send lifecycle (queued -> sending -> sent ...) and what the log knows of each campaign."""

    def campaign_first_seen(self, ids: Iterable[str], now: datetime, *, record: bool = True) -> dict[str, datetime]:
        """When each campaign was first seen."""
        ...

    def campaign_steps(self) -> dict[str, dict[str, StepState]]:
        """Each campaign's steps as the log last planned them."""
        ...

    def expansions(self) -> dict[str, tuple[datetime, str]]:
        """``at`` campaign -> (when it went out to its segment, its ``at`` and ``where`` then)."""
        ...

    def record_expansion(self, campaign: str, now: datetime, digest: str, *, since_sends: bool = False) -> None:
        """Note that an ``at`` campaign went out to its segment."""
        ...

    def legacy_steps(self) -> list[tuple[str, int]]:
        """(campaign, step) of rows written before schema 4."""
        ...

    def adopt_step_ids(self, keys: dict[tuple[str, int], str]) -> int:
        """Give rows from before schema 4 their step's identity."""
        ...

    def record_campaign_edits(self, states: dict[str, dict[str, StepState]],
                              campaign_renames: Iterable[tuple[str, str]],
                              step_renames: Iterable[tuple[str, str, str]], now: datetime) -> None:
        """Apply a review of campaigns.toml's edits, in one transaction."""
        ...

    def sends(self, *, status: Iterable[SendStatus] | None = None, campaign: str | None = None) -> list[SendRow]:
        """Send rows, oldest first."""
        ...

    def sent_message_ids(self, ids: Iterable[str]) -> dict[str, SentRef]:
        """Message-ID -> the send it was, for the ids the worker sent."""
        ...

    def sent_count(self) -> int:
        """How many sends are ``sent`` (only ever grows)."""
        ...

    def has_sends(self, campaign: str) -> bool:
        """Whether the campaign has any sends row."""
        ...

    def has_sent(self) -> bool:
        """Whether any message was ever sent."""
        ...

    def queue_sends(self, rows: Sequence[Mapping[str, object]]) -> int:
        """Insert planned sends (queued or skipped); existing keys are left alone."""
        ...

    def mark_sent(self, send_id: int, now: datetime, *, customer_key: str | None, campaign: str, step: int,
                  message_id: str, subject: str, body: str, source: str) -> None:
        """Sending -> sent, with its email_out activity."""
        ...

    def mark_retry(self, send_id: int, error: str, next_attempt: datetime) -> None:
        """Sending -> queued, retried at ``next_attempt``."""
        ...

    def mark_failed(self, send_id: int, error: str, now: datetime, *, customer_key: str, campaign: str,
                    step: int) -> None:
        """Failed, with a send_failed activity."""
        ...

    def mark_status(self, send_id: int, status: SendStatus, error: str | None = None, *,
                    sent_at: datetime | None = None) -> None:
        """Set a send's status directly (recovery, blocked at hand-over, uncertain)."""
        ...

    def requeue_problems(self, ids: list[int], statuses: tuple[str, ...]) -> list[str]:
        """Why some of ``ids`` cannot be requeued."""
        ...

    def requeue(self, ids: list[int] | None, statuses: tuple[str, ...] = ...) -> int:
        """Put uncertain/failed sends back in the queue (the admin's decision)."""
        ...

    def count_sends(self, status: SendStatus) -> int:
        """How many sends are in one status (the queue's depth after a pass)."""
        ...

    def has_sent_in(self, campaign: str) -> bool:
        """Whether any step of a campaign was sent (rows from before schema 4 left out)."""
        ...

    def sent_step_count(self, campaign: str, step_id: str) -> int:
        """How many customers were sent one step (by the unique index's prefix)."""
        ...


class Claims(Protocol):
    """The hand-over among several workers (issue #20): claims, the ``sending`` mark, the rate limits' counts."""

    def claim_sends(self, me: str, now: datetime, n: int, *, held: Sequence[str] = (), after: int = 0
                    ) -> list[SendRow]:
        """Claim up to ``n`` queued, due sends for worker ``me``, in one statement; returned in id order."""
        ...

    def release_claims(self, me: str) -> int:
        """Let go of the queued sends ``me`` claimed and did not hand over."""
        ...

    def queue_counts(self, me: str, now: datetime, held: Sequence[str] = ()) -> tuple[int, int]:
        """(queued sends ``me`` could claim now, queued sends of the held campaigns)."""
        ...

    def recent_hand_overs(self, account: str | None, now: datetime) -> RecentHandOvers:
        """One account's hand-overs: the last minute's times and the last 24 hours' count."""
        ...

    def mark_sending(self, send_id: int, message_id: str, now: datetime, holder: str) -> bool:
        """Queued and claimed by ``holder`` -> sending, committed before the hand-over; False otherwise."""
        ...

    def mark_sent_and_sending(self, sent: Sent | None, send_id: int, message_id: str, now: datetime, holder: str,
                              gate: Gate | None = None, *, links: Sequence[str] = (), rate: Rate | None = None
                              ) -> Claim:
        """Record the last message's ``sent`` and mark the next ``sending`` (with its tracked links), in one commit.

        A next send that ``gate``'s rule blocks, as the log is now, is recorded ``skipped`` instead (issues #5,
        #19); one over ``rate``'s limits, counted across workers, stays queued (issue #20).
        """
        ...


class Suppressions(Protocol):
    """Addresses never mailed, with why, when and who said so."""

    def suppress(self, email: str, reason: SuppressionReason, source: str, now: datetime) -> bool:
        """Add an address; False when it was already there."""
        ...

    def unsuppress(self, email: str) -> bool:
        """Remove an address."""
        ...

    def suppressions(self) -> dict[str, Suppression]:
        """Email -> its entry, oldest first."""
        ...

    def suppression(self, email: str) -> Suppression | None:
        """One address's entry, or None."""
        ...

    def unsuppress_if(self, email: str, reason: SuppressionReason, source: str) -> bool:
        """Remove an address only while its entry is the one ``reason`` and ``source`` made (issue #19)."""
        ...

    def suppressions_page(self, limit: int, offset: int = 0) -> list[tuple[str, Suppression]]:
        """``limit`` entries from ``offset``, in the list's order."""
        ...

    def suppression_count(self) -> int:
        """How many addresses are on the list."""
        ...


class Tracking(Protocol):
    """Tracked links, clicks and opens (issue #19): each once per link or send, by one statement."""

    def send_by_token(self, token: str) -> TokenSend | None:
        """The campaign send a token names, by the Message-ID index, or None."""
        ...

    def tracked_link(self, send_id: int, n: int) -> str | None:
        """The original URL of a send's link ``n``, or None."""
        ...

    def tracked_links(self, send_id: int) -> list[str]:
        """A send's tracked links, by number."""
        ...

    def mark_clicked(self, send_id: int, n: int, now: datetime) -> bool:
        """Note the first click on a send's link ``n``; False when clicked before."""
        ...

    def mark_opened(self, send_id: int, now: datetime) -> bool:
        """Note a send's first open; False when opened before."""
        ...


class Reports(Protocol):
    """Reads across tables for reports and write-back, and the record of stage runs."""

    def start_run(self, job: str, now: datetime) -> int:
        """Record that a job started."""
        ...

    def finish_run(self, run_id: int, now: datetime, *, ok: bool, stats: dict[str, Any], error: str | None) -> None:
        """Record how a job ended."""
        ...

    def last_times(self) -> LastTimes:
        """Per customer: the last campaign email sent and the last reply."""
        ...

    def funnel(self) -> list[FunnelRow]:
        """Per campaign and step: sends by status, and bounced/replied/unsubscribed after, and clicked."""
        ...

    def daily(self, bounds: Sequence[datetime], campaign: str | None = None) -> list[DayCounts]:
        """Per interval between consecutive ``bounds``: sent, replied, bounced, unsubscribed, clicked."""
        ...

    def counts(self) -> dict[str, int]:
        """Row counts per table."""
        ...

    def last_runs(self) -> list[RunRow]:
        """Each job's last run, with when it last finished ``ok``."""
        ...

    def queue_depth(self, now: datetime) -> QueueDepth:
        """Sends by status, and how many queued ones are due ``now``."""
        ...

    def quarantine_count(self) -> int:
        """How many messages are in quarantine."""
        ...

    def quarantined(self, limit: int) -> list[QuarantineRow]:
        """The newest quarantined messages, without their bytes."""
        ...

    def quarantined_message(self, qid: int) -> QuarantinedBytes | None:
        """One quarantined message with its bytes (None: no such id)."""
        ...

    def replies_since(self, since: datetime, limit: int) -> list[ReplyRow]:
        """Replies logged at or after ``since``, newest first."""
        ...

    def search_customers(self, text: str, limit: int) -> list[StoredCustomer]:
        """Customers whose key or any mapped value contains ``text``."""
        ...


class Planning(Protocol):
    """What the plan part asks (issue #23): who can be due now, and the history of those candidates only.

    A pass costs what is due, not what is stored: the sync's events since
    the last plan, follow-ups whose time has come (``plan_due``), and, per
    kind, the history of the candidates, one query each.
    """

    def plan_mark(self) -> PlanMark | None:
        """Where the last recorded plan stopped, or None before the first (every campaign is planned then)."""
        ...

    def last_activity_id(self) -> int:
        """The newest activity's id (0 for an empty log)."""
        ...

    def events_between(self, after: int, upto: int) -> Events:
        """Customers added or changed, and emails sent, logged after activity ``after`` up to ``upto``."""
        ...

    def due_by(self, now: datetime, campaigns: Iterable[str]) -> list[tuple[str, str]]:
        """(campaign, customer) of these campaigns whose next look has come (``plan_due``, by its index)."""
        ...

    def queued_customers(self) -> set[str]:
        """Customers with a queued send (the dispatch checks them with their history)."""
        ...

    def planned_as(self) -> dict[str, str | None]:
        """Campaign -> its definition as last planned (None: never, or held then)."""
        ...

    def campaign_customers(self, campaign: str) -> set[str]:
        """Customers with any send of one campaign (a re-planned campaign's follow-ups)."""
        ...

    def present_customers(self, *, seen_after: datetime | None = None) -> set[str]:
        """Customers in the sheet (first seen after ``seen_after`` when given)."""
        ...

    def every_customer(self) -> set[str]:
        """Every customer the log knows, in the sheet or not, with or without sends (``check --plan``'s outlook)."""
        ...

    def changed_to(self, field_name: str) -> set[str]:
        """Customers a sync logged a change of ``field_name`` for (a ``change`` campaign re-planned)."""
        ...

    def customers_among(self, keys: Iterable[str]) -> Iterator[StoredCustomer]:
        """The present customers among ``keys``, in the sheet's order of arrival."""
        ...

    def present_keys_among(self, keys: Iterable[str]) -> Iterator[str]:
        """The present customers' keys among ``keys``, in the order ``customers_among`` gives them, streamed."""
        ...

    def absent_among(self, keys: Iterable[str]) -> list[str]:
        """The keys among ``keys`` of no present customer, sorted."""
        ...

    def sends_among(self, keys: Iterable[str]) -> list[SendRow]:
        """Every send to these customers, oldest first."""
        ...

    def inbound_among(self, keys: Iterable[str]) -> list[InboundEvent]:
        """These customers' inbound activities, each bounce's permanence decoded."""
        ...

    def field_changes_among(self, fields: Iterable[str],
                            keys: Iterable[str]) -> dict[str, list[tuple[str, object, datetime]]]:
        """Field -> (customer, new value, when) of these customers' changes of ``fields``, oldest first."""
        ...

    def quarantined_among(self, keys: Iterable[str]) -> list[QuarantinedContact]:
        """These customers' quarantined messages, oldest first."""
        ...

    def suppressed_among(self, emails: Iterable[str]) -> frozenset[str]:
        """Which of these addresses (lower case) are suppressed."""
        ...

    def record_plan(self, mark: PlanMark, planned_as: dict[str, str | None], due: dict[tuple[str, str], str | None],
                    *, replanned: Iterable[str] = ()) -> None:
        """After a plan was queued: the mark, each campaign's definition, and the next looks, in one transaction."""
        ...


class Contacts(Protocol):
    """Contact times for the sales rules (issue #21): read for every customer at once, decided by ``contact.py``."""

    def contact_times(self, stage_field: str | None) -> dict[str, ContactTimes]:
        """Per customer: latest ``email_in``, our latest email to them, latest change of ``stage_field``."""
        ...

    def inbound_after_outbound(self, since: datetime) -> list[InboundMail]:
        """Customer mail received since ``since`` and not before our latest email to them, oldest first."""
        ...

    def sales_rows(self, name_field: str | None, stage_field: str | None, owner_field: str | None, *,
                   timed: bool = True) -> list[SalesRow]:
        """Every customer present: name, stage, owner, first seen, and (``timed``) their contact times."""
        ...

    def inbound_customers(self, message_ids: list[str]) -> dict[str, str | None]:
        """Message-ID -> the customer (None: unknown sender) of the ``email_in`` logged under it."""
        ...


class PipelineRows(Protocol):
    """The rows of ``report pipeline`` (issue #21): plain tuples for every customer at once, grouped by the caller."""

    def customer_mail_between(self, start: datetime, end: datetime) -> list[MailRow]:
        """Each ``email_in`` of a customer in [start, end] with our first campaign step and reply after it."""
        ...

    def named_replies_between(self, start: datetime, end: datetime) -> list[NamedRow]:
        """(Message-ID, time) for each message a ``reply_out`` of [start, end] names."""
        ...

    def stage_moves_between(self, stage_field: str, start: datetime, end: datetime) -> list[MoveRow]:
        """Each change of ``stage_field`` logged in [start, end]: customer, time, old, new."""
        ...


class Digests(Protocol):
    """What the owner digests read (issue #21): their rows by day and status, and the events since the last one."""

    def digest_planned(self, day: str) -> bool:
        """Whether any owner's digest row of this local day (``YYYY-MM-DD``) exists."""
        ...

    def digest_sends(self, status: SendStatus | None = None) -> list[SendRow]:
        """The digests' rows (in one status when given), oldest first."""
        ...

    def last_digests(self) -> dict[str, datetime]:
        """Owner address -> ``queued_at`` of their latest digest that was sent."""
        ...

    def digest_events(self, after: datetime, upto: datetime, owner_field: str | None
                      ) -> list[tuple[Activity, datetime]]:
        """Replies, bounces, unsubscribes, customers added, owner changes logged in (``after``, ``upto``]."""
        ...

    def follow_ups_sent_since(self, since: datetime) -> list[tuple[str, str, str, str]]:
        """(customer, campaign, step key, sent at: ISO text) of campaign steps after the first sent since ``since``."""
        ...


class Workers(Protocol):
    """The workers sharing the log (issue #20): registered, beating, stopped; and the sends they hold."""

    def register_worker(self, worker_id: str, host: str, pid: int, now: datetime) -> None:
        """Record a worker that starts."""
        ...

    def beat(self, worker_id: str, now: datetime, stage: str | None) -> bool:
        """Record a heartbeat (and the stage); False when the worker's row says it stopped (found dead)."""
        ...

    def stop_workers(self, ids: Iterable[str], now: datetime) -> list[str]:
        """Mark workers stopped; which were running until now."""
        ...

    def forget_workers(self, stopped_before: datetime) -> int:
        """Delete the rows of workers stopped before ``stopped_before``; how many."""
        ...

    def workers(self, *, stopped_since: datetime | None = None) -> list[WorkerRow]:
        """The workers not marked stopped, and those stopped since ``stopped_since``."""
        ...

    def unlocked_workers(self, ids: Iterable[str]) -> set[str]:
        """Of these workers, those whose session lock is free (PostgreSQL; SQLite: none)."""
        ...

    def stuck_sends(self, worker_id: str) -> list[SendRow]:
        """The ``sending`` rows recovery resolves: no holder, this worker's own, or a worker not running."""
        ...


class LogStore(Log, Customers, Activities, FetchedMail, Sends, Claims, Planning, Suppressions, Tracking, Reports,
               Contacts, Digests, PipelineRows, Workers, Protocol):
    """The whole log: every part (what ``Workspace.open_store`` returns)."""


PARTS: tuple[type, ...] = (Log, Customers, Activities, FetchedMail, Sends, Claims, Planning, Suppressions, Tracking,
                           Reports, Contacts, Digests, PipelineRows, Workers)
"""Every part, for tests that check the protocols describe the whole public surface."""
