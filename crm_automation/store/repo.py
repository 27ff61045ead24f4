"""The activity log's one entry point: :class:`Store`, one part per thing the log records.

Callers open it with ``Store.open(path)`` and use its methods; each part
lives in its own module (see the package docstring for the layout and the
rule for who owns a transaction). The names below are re-exported so that
``from crm_automation.store.repo import ...`` keeps working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crm_automation.store.activities import (
    Activity,
    ActivityLog,
    InboundEvent,
    QuarantinedContact,
)
from crm_automation.store.claims import ClaimLog
from crm_automation.store.connection import Connection, iso, parse_iso, storage_error
from crm_automation.store.contact import ContactLog, ContactTimes, InboundMail
from crm_automation.store.customers import CustomerLog, SheetState, StoredCustomer, SyncStats
from crm_automation.store.digests import DigestLog
from crm_automation.store.due import Events, PlanLog, PlanMark
from crm_automation.store.inbound import InboundLog
from crm_automation.store.pipeline import PipelineLog
from crm_automation.store.reports import FunnelRow, LastTimes, Reports
from crm_automation.store.schema import PERMANENCE_SQL
from crm_automation.store.sends import DIGEST_LABEL, NOTIFICATION_LABEL, SendKind, SendLog, SendRow, SentRef
from crm_automation.store.suppressions import Suppression, SuppressionList
from crm_automation.store.tracking import TokenSend, TrackingLog
from crm_automation.store.workers import WorkerLog, WorkerRow

__all__ = [
    "DIGEST_LABEL",
    "NOTIFICATION_LABEL",
    "PERMANENCE_SQL",
    "Activity",
    "ContactTimes",
    "Events",
    "FunnelRow",
    "InboundEvent",
    "InboundMail",
    "LastTimes",
    "PlanMark",
    "QuarantinedContact",
    "SendKind",
    "SendRow",
    "SentRef",
    "SheetState",
    "Store",
    "StoredCustomer",
    "Suppression",
    "SyncStats",
    "TokenSend",
    "WorkerRow",
    "iso",
    "parse_iso",
    "storage_error",
]


class Store(CustomerLog, ActivityLog, InboundLog, SendLog, ClaimLog, SuppressionList, TrackingLog, Reports, PlanLog,
            ContactLog, DigestLog, PipelineLog, WorkerLog, Connection):
    """The activity log. Open with :meth:`open`; one connection per process.

    Each base is one part of the log sharing this one connection:
    customers, activities, fetched mail, sends and their claims, suppressions, tracked links, reports,
    contact times, the pipeline's rows, the workers sharing the log.
    """


if TYPE_CHECKING:
    from crm_automation.store import protocols

    # mypy proves here that Store implements every part's protocol (issue #18): a method whose signature drifts
    # from its protocol fails the type check, not a PostgreSQL backend months later.
    _conforms: type[protocols.LogStore] = Store
