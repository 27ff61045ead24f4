"""The SQLite log's tables (SPEC §8), created through sqlite-utils.

Tables are named with ``db.table(name)`` (a :class:`sqlite_utils.db.Table`)
rather than ``db[name]``, which may also be a view and so types as
``Table | View``; the log has no views.

Columns beyond the SPEC's are marked "extra" and exist for exactly-once
bookkeeping: ``customers.row_hash`` (skip unchanged rows), ``activities.logged_at``,
``sends.email``/``attempts``/``next_attempt_at``, ``quarantine.digest`` and the
``campaigns`` table (when each campaign was first seen, so adding one never
mails existing customers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crm_automation.store.dialect import SQLITE, Dialect

if TYPE_CHECKING:
    import sqlite_utils

INBOUND_KINDS = ("email_in", "auto_reply", "bounce", "unsubscribe")
# The same kinds as an SQL list of literals. Queries must spell them this way, not as bound
# parameters: SQLite uses a partial index (``... WHERE kind IN (...)``) only when it can prove the
# query's condition implies the index's, which it cannot do for parameters (issue #13: the
# inbound dedup lookup scanned the whole table, 0.3 ms a message at 10,000 and growing).
INBOUND_KINDS_SQL = "(" + ", ".join(f"'{k}'" for k in INBOUND_KINDS) + ")"
# What the funnel and the dashboard's charts count after a send (issue #19): replies, bounces, unsubscribes,
# link clicks. Spelled as literals like INBOUND_KINDS_SQL, for the partial indexes of schema 7.
EVENT_KINDS = ("email_in", "bounce", "unsubscribe", "click")
EVENT_KINDS_SQL = "(" + ", ".join(f"'{k}'" for k in EVENT_KINDS) + ")"
# When the log learnt of an activity (``logged_at``; rows written by hand may lack it): the time the funnel's
# "after the send" and the charts' days use, and the expression schema 7 indexes (spelled alike everywhere).
LOGGED_AT_SQL = "COALESCE(logged_at, occurred_at)"
# A bounce activity's permanence: ``details.permanence`` (issue #11), or for rows logged before it,
# ``details.permanent`` (true: hard; false: a delay, as they were treated then). ``a`` is ``activities``.
def permanence_sql(d: Dialect) -> str:
    """:data:`PERMANENCE_SQL` in ``d``'s spelling (SQLite's to the letter)."""
    return (f"COALESCE({d.json_text('a.details', 'permanence')}, "
            f"CASE WHEN {d.json_bool('a.details', 'permanent')} THEN 'hard' ELSE 'delayed' END)")


PERMANENCE_SQL = permanence_sql(SQLITE)


def create_v1(db: sqlite_utils.Database) -> None:
    """Schema version 1: every table of SPEC §8."""
    db.table("customers").create(
        {"key": str, "row": int, "data": str, "first_seen": str, "last_changed": str, "email_status": str,
         "row_hash": str, "present": int, "removed_at": str},
        pk="key", defaults={"email_status": "ok", "present": 1}, not_null={"data", "first_seen"},
    )
    db.table("activities").create(
        {"id": int, "customer_key": str, "kind": str, "occurred_at": str, "subject": str, "body": str,
         "message_id": str, "in_reply_to": str, "campaign": str, "step": int, "source": str, "details": str,
         "logged_at": str},
        pk="id", not_null={"kind", "occurred_at"},
    )
    db.table("activities").create_index(["customer_key", "occurred_at"])
    db.execute(
        f"CREATE UNIQUE INDEX idx_activities_inbound_message_id ON activities(message_id) "
        f"WHERE kind IN {INBOUND_KINDS_SQL}"
    )
    db.table("sends").create(
        {"id": int, "campaign": str, "step": int, "customer_key": str, "status": str, "message_id": str,
         "queued_at": str, "sent_at": str, "error": str, "email": str, "attempts": int, "next_attempt_at": str},
        pk="id", not_null={"campaign", "step", "customer_key", "status"}, defaults={"attempts": 0},
    )
    db.table("sends").create_index(["campaign", "step", "customer_key"], unique=True)
    db.table("sends").create_index(["message_id"])
    db.table("suppressions").create({"email": str, "reason": str, "at": str, "source": str}, pk="email")
    db.table("quarantine").create(
        {"id": int, "source": str, "received_at": str, "error": str, "raw": bytes, "digest": str}, pk="id"
    )
    db.table("quarantine").create_index(["digest"], unique=True)
    db.table("mailbox_state").create(
        {"folder": str, "uidvalidity": int, "last_uid": int, "updated_at": str}, pk="folder"
    )
    db.table("runs").create(
        {"id": int, "job": str, "started_at": str, "finished_at": str, "ok": int, "stats": str, "error": str},
        pk="id",
    )
    db.table("campaigns").create({"id": str, "first_seen": str}, pk="id")


def create_v2(db: sqlite_utils.Database) -> None:
    """Schema version 2: ``sheet_state`` remembers the sheet's content digest at the last complete sync.

    A re-sync of an unchanged file then costs one hash of its bytes instead
    of a read, a validation and a diff (issue #3's 1.2x target).
    """
    db.table("sheet_state").create(
        {"source": str, "fingerprint": str, "synced_at": str, "rows": int, "problems": str}, pk="source"
    )


def create_v3(db: sqlite_utils.Database) -> None:
    """Schema version 3 (issue #9, hardening): nothing lost, nothing sent from a swapped log.

    - ``activities.digest`` (extra): a digest of an inbound message's content
      (sender, subject, date, text). The unique key becomes (Message-ID,
      digest), so a second message that reuses a Message-ID with different
      content is logged instead of dropped, while the same message delivered
      twice (CC + BCC, two folders) is still logged once. Rows logged before
      this version have no digest; the store treats them as matching any
      content of their Message-ID, so upgrading never logs a message twice.
    - ``maildir_seen`` (extra): the Maildir files already logged, by base name
      (the part before ``:2,``, which mail clients change when they flag a
      message). The Maildir cursor used to be the newest file time, which
      lost a message whose file time is older (moved back from Junk, restored
      from a backup, or linked into ``new/`` late by a busy MTA).
    - ``quarantine.from_addr``, ``customer_key``, ``size`` (extra): whose
      message it was, so a quarantined message from a customer counts as
      contact, and how large the whole message was when only its start is kept.
    - ``meta`` (extra): ``log_id``, the identity the workspace's marker file
      checks, so a deleted, replaced or emptied log is noticed.
    """
    import uuid

    db.table("activities").add_column("digest", str)
    db.execute("DROP INDEX IF EXISTS idx_activities_inbound_message_id")
    db.execute(
        f"CREATE UNIQUE INDEX idx_activities_inbound_message_digest ON activities(message_id, digest) "
        f"WHERE kind IN {INBOUND_KINDS_SQL}"
    )
    db.execute(f"CREATE INDEX idx_activities_inbound_message_id ON activities(message_id) "
               f"WHERE kind IN {INBOUND_KINDS_SQL}")
    db.execute("CREATE TABLE maildir_seen (folder TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (folder, name)) "
               "WITHOUT ROWID")
    db.table("quarantine").add_column("from_addr", str)
    db.table("quarantine").add_column("customer_key", str)
    db.table("quarantine").add_column("size", int)
    db.table("quarantine").create_index(["customer_key"])
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("meta").insert({"key": "log_id", "value": uuid.uuid4().hex})


def create_v4(db: sqlite_utils.Database) -> None:
    """Schema version 4 (issue #17): a step is known by its identity, not by its place in the campaign.

    - ``sends.step_id`` (extra): the step's key (its ``id`` in campaigns.toml,
      else its template's name). Sends are unique on (campaign, step_id,
      customer) instead of (campaign, step, customer): ``step`` keeps the
      step's place when it was queued, for reading, and inserting a step no
      longer makes an old follow-up look like the new one. Rows written
      before this version get their step_id from campaigns.toml as it is at
      the first send pass after the upgrade (``SendLog.adopt_step_ids``):
      the file the log was built on, since steps were only ever counted by
      place. Owner notifications (whose ``step`` is an activity id) get it here.
    - ``campaign_steps`` (extra): each campaign's steps as the log last planned
      them, so the next pass can tell what an edit of campaigns.toml changed
      (:mod:`crm_automation.edits`).
    - ``campaigns.renamed_to`` (extra): a campaign whose sends were carried
      over to another id by ``renamed_from``.
    - ``campaigns.expanded_at``, ``expanded_as`` (extra): when an ``at``
      campaign went out to its segment, and its ``at`` and ``where`` then: it
      goes to the segment as it was at that time, once; a customer who joins
      the segment later, or a ``where`` edited afterwards, gets no broadcast
      meant for another day (``planner._step0_targets``).
    """
    db.table("sends").add_column("step_id", str)
    db.execute("DROP INDEX IF EXISTS idx_sends_campaign_step_customer_key")
    db.execute("CREATE UNIQUE INDEX idx_sends_campaign_step_id_customer ON sends(campaign, step_id, customer_key)")
    db.execute("UPDATE sends SET step_id = CAST(step AS TEXT) WHERE campaign = 'owner-notify'")
    db.table("campaigns").add_column("renamed_to", str)
    db.table("campaigns").add_column("expanded_at", str)
    db.table("campaigns").add_column("expanded_as", str)
    db.execute("CREATE TABLE campaign_steps (campaign TEXT NOT NULL, step_id TEXT NOT NULL, position INTEGER NOT NULL, "
               "template TEXT NOT NULL, retired INTEGER NOT NULL DEFAULT 0, unresolved TEXT, first_seen TEXT, "
               "PRIMARY KEY (campaign, step_id)) WITHOUT ROWID")


def create_v5(db: sqlite_utils.Database) -> None:
    """Schema version 5 (issue #18): a send knows what kind of message it is.

    ``sends.kind`` (extra): ``campaign_step`` or ``owner_notification``
    (:class:`crm_automation.store.sends.SendKind`); each kind has its own key
    for exactly-once. Owner notifications were recognised by their campaign's
    name (``owner-notify``, the activity's id as ``step``); those rows get
    their kind here and keep their key (``step_id`` = the activity's id, set
    by schema 4), so no reply is forwarded twice after the upgrade.
    """
    db.execute("ALTER TABLE sends ADD COLUMN kind TEXT NOT NULL DEFAULT 'campaign_step'")
    db.execute("UPDATE sends SET kind = 'owner_notification' WHERE campaign = 'owner-notify'")


def create_v6(db: sqlite_utils.Database) -> None:
    """Schema version 6 (issue #23): a pass asks the log what can be due instead of reading all of it.

    - ``plan_due`` (extra): per (campaign, customer), when the planner should
      look at them again: the day their next follow-up comes due (``after_days``
      from the start of their sequence), or at once for a send the planner
      chose and could not record yet (``one_per_cycle``). Written by the send
      pass's plan part after the previous step was sent; indexed by the time.
    - ``campaigns.planned_as`` (extra): each campaign's definition as last
      planned, so an edit (a ``where``, an inserted step, a re-enabled
      campaign) re-plans that campaign once.
    - indexes: ``sends`` by customer (a candidate's history); partial ones
      on the queue, on ``sending`` (recovery) and ``uncertain``, and on
      ``sent`` by time (the rate limits: an indexed aggregate; the log's
      sent count); the rows from before schema 4. Queries name the status
      as a literal: SQLite uses a partial index only then.

    The first send pass after the upgrade plans every campaign as before and
    records where it stopped (``meta`` ``plan_activity_id``); from then on a
    pass plans the customers with news since then and the follow-ups whose
    day has come.
    """
    db.execute("CREATE TABLE plan_due (campaign TEXT NOT NULL, customer_key TEXT NOT NULL, due_at TEXT NOT NULL, "
               "PRIMARY KEY (campaign, customer_key)) WITHOUT ROWID")
    db.execute("CREATE INDEX idx_plan_due_at ON plan_due(campaign, due_at)")
    db.execute("CREATE INDEX idx_plan_due_customer ON plan_due(customer_key)")
    db.table("campaigns").add_column("planned_as", str)
    db.execute("CREATE INDEX idx_sends_customer ON sends(customer_key)")
    # Partial indexes on the statuses a pass asks for: small, and a message passing through them costs the
    # send loop a few entries on hot pages (an index on every status moved each message across the index).
    for status in ("queued", "sending", "uncertain"):
        db.execute(f"CREATE INDEX idx_sends_{status} ON sends(id) WHERE status = '{status}'")
    db.execute("CREATE INDEX idx_sends_sent ON sends(sent_at) WHERE status = 'sent'")
    db.execute("CREATE INDEX idx_sends_legacy ON sends(campaign, step) WHERE step_id IS NULL")


def create_v7(db: sqlite_utils.Database) -> None:
    """Schema version 7 (issue #19, ``serve``): what a send's tracked links led to, and who clicked or opened.

    - ``send_links`` (extra): per send, each link the composer rewrote to
      ``{public_url}/c/{token}/{n}`` (``track_clicks``), with its original
      URL, written in the transaction that marks the send ``sending``. A
      click is redirected to the URL stored here, never to one taken from
      the request (no open redirect) and never re-rendered from a template
      that may have changed since. ``clicked_at``: the first click on that
      link of that send; setting it only while it is NULL is what makes the
      ``click`` activity once per link per send, even for two requests at
      the same instant.
    - ``send_opens`` (extra): a send's first ``open`` (``track_opens``); the
      primary key makes the ``open`` activity once per send.

    A token is resolved to its send by a range of the existing
    ``sends.message_id`` index (from ``<token@`` up to ``<tokenA``): one indexed
    step, no new index needed (``store/tracking.py``).
    """
    db.execute("CREATE TABLE send_links (send_id INTEGER NOT NULL, n INTEGER NOT NULL, url TEXT NOT NULL, "
               "clicked_at TEXT, PRIMARY KEY (send_id, n)) WITHOUT ROWID")
    db.execute("CREATE TABLE send_opens (send_id INTEGER PRIMARY KEY, opened_at TEXT NOT NULL)")


def create_v8(db: sqlite_utils.Database) -> None:
    """Schema version 8 (issue #19): the dashboard's reads cost what they show, not the whole log.

    Measured with benchmarks/bench_pages.py (100,000 customers, 1,000,000
    activities): the funnel grouped every send with every activity of its
    customer, one query per step and column (tens of seconds); the health
    read every stage run ever recorded. Indexes, all partial but the runs'
    ones, so the send loop pays two more index entries when a message
    becomes ``sent`` (none while it is queued or sending), and the fetch loop
    two per reply, bounce or unsubscribe:

    - ``activities`` of the funnel's kinds (:data:`EVENT_KINDS`) by kind and
      customer, covering (campaign, step and the times): each customer's
      last reply, unsubscribe and bounce are read from the index alone; and
      by kind and logged time, for the per-day charts and the recent replies;
      clicks by (campaign, step, customer): the funnel's ``clicked`` in order.
    - ``sends``, per status that can grow large (``sent``, ``failed``,
      ``skipped``), partial ones by (campaign, step) (and the status, which
      SQLite 3.40 reads from the table otherwise): the funnel's counts
      read one status at a time in order (schema 6's partial indexes cover
      the states a message passes through). No index on ``status`` itself:
      each message would move across it twice, and SQLite then counted a
      status by that index instead of the status's partial one. ``sent``
      ones by customer and time too (whose messages preceded an event);
      ``idx_sends_sent`` (schema 6, by ``sent_at``) gains the campaign, for
      the sent-per-day chart.
    - ``runs`` by job: each stage's last run and last good run by a seek.

    ``IF NOT EXISTS``: tests that rebuild an older schema keep these.
    """
    db.execute(f"CREATE INDEX IF NOT EXISTS idx_activities_events ON activities(kind, customer_key, campaign, step, "
               f"logged_at, occurred_at) WHERE kind IN {EVENT_KINDS_SQL}")
    db.execute(f"CREATE INDEX IF NOT EXISTS idx_activities_events_at ON activities(kind, {LOGGED_AT_SQL}, campaign, "
               f"customer_key) "
               f"WHERE kind IN {EVENT_KINDS_SQL}")
    db.execute("CREATE INDEX IF NOT EXISTS idx_activities_clicks ON activities(campaign, step, customer_key) "
               "WHERE kind = 'click'")
    for status in ("sent", "failed", "skipped"):
        db.execute(f"CREATE INDEX IF NOT EXISTS idx_sends_{status}_step ON sends(campaign, step, status) "
                   f"WHERE status = '{status}'")
    db.execute("CREATE INDEX IF NOT EXISTS idx_sends_sent_customer ON sends(customer_key, sent_at, campaign, step) "
               "WHERE status = 'sent'")
    db.execute("DROP INDEX IF EXISTS idx_sends_sent")
    db.execute("CREATE INDEX idx_sends_sent ON sends(sent_at, campaign) WHERE status = 'sent'")
    db.execute("CREATE INDEX IF NOT EXISTS idx_runs_job ON runs(job, id)")
    db.execute("CREATE INDEX IF NOT EXISTS idx_runs_job_ok ON runs(job, ok, finished_at)")


def create_v9(db: sqlite_utils.Database) -> None:
    """Schema version 9 (issue #21, ``contact``): contact times per customer by grouped queries; our own replies.

    - partial indexes on ``activities`` by (customer, time) for ``email_in``
      (the customer's latest mail) and ``reply_out`` (ours, from the Sent
      folder), and on ``field_changed`` by (the changed field, customer,
      time) (when a customer entered their stage): each ``MAX ... GROUP BY
      customer_key`` of ``store/contact.py`` reads one small index instead
      of every activity. Queries name the kind as a literal and the field
      as ``json_extract(details, '$.field')``, exactly as here: SQLite uses
      a partial or expression index only then.
    - ``reply_out`` rows are unique on their Message-ID: a message of the
      Sent folder read twice (a second pass, a copy in two folders) is
      logged once, as inbound mail is (schema 3).

    ``IF NOT EXISTS``: indexes only, so a log whose history was rewritten by
    hand (or a test that rebuilds an old schema) migrates all the same.
    """
    db.execute("CREATE INDEX IF NOT EXISTS idx_activities_email_in ON activities(customer_key, occurred_at) "
               "WHERE kind = 'email_in'")
    db.execute("CREATE INDEX IF NOT EXISTS idx_activities_reply_out ON activities(customer_key, occurred_at) "
               "WHERE kind = 'reply_out'")
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS idx_activities_reply_out_message ON activities(message_id) "
               "WHERE kind = 'reply_out'")
    db.execute("CREATE INDEX IF NOT EXISTS idx_activities_field_changed ON activities("
               "json_extract(details, '$.field'), customer_key, occurred_at) WHERE kind = 'field_changed'")


# The funnel's three "after the send" columns of ``sends`` (schema 10), and the kinds of activity they follow.
FOLLOW_UP_KINDS_SQL = "('email_in', 'bounce', 'unsubscribe')"


def _followed(kind: str, extra: str = "", cast: str = "") -> str:
    """Whether a ``kind`` activity of the send's customer was logged after the send (the funnel's "after")."""
    return (f"(sends.status = 'sent' AND EXISTS (SELECT 1 FROM activities a WHERE a.kind IN {EVENT_KINDS_SQL} "
            f"AND a.kind = '{kind}' AND a.customer_key = sends.customer_key "
            f"AND COALESCE(a.logged_at, a.occurred_at) > sends.sent_at{extra})){cast}")


def follow_up_set_sql(permanence: str = PERMANENCE_SQL, cast: str = "") -> str:
    """Recomputes a send's three columns from the log: what the funnel counted per step before schema 10, per send.

    A bounce counts for its own campaign, or for every campaign when hard or
    of no known campaign; a delay warning is no bounce (issue #11).
    ``permanence``: :data:`PERMANENCE_SQL` in the engine's spelling;
    ``cast``: how a truth value becomes the column's 0/1 (PostgreSQL:
    ``::int``; SQLite's truth values are 0/1 already).
    """
    bounce_counts = (f" AND {permanence} != 'delayed' "
                     f"AND ({permanence} = 'hard' OR a.campaign IS NULL OR a.campaign = sends.campaign)")
    return (f"replied = {_followed('email_in', cast=cast)}, unsubscribed = {_followed('unsubscribe', cast=cast)}, "
            f"bounced = {_followed('bounce', bounce_counts, cast)}")


FOLLOW_UP_SET_SQL = follow_up_set_sql()


def create_v10(db: sqlite_utils.Database) -> None:
    """Schema version 10 (issue #19): each sent message knows whether a reply, bounce or unsubscribe followed it.

    The funnel's "replied / bounced / unsubscribed after the send" matched
    every customer's last events with that customer's earlier messages at
    read time: ~270 ms of CPU at 100,000 customers and 1,000,000 activities
    (58,000 customers' events joined to 161,000 messages, then sorted and
    counted distinct), over the dashboard's 300 ms on its own. Kept per
    send instead, the funnel reads three small partial indexes in (campaign,
    step, customer) order: ~25 ms.

    ``sends.replied``, ``bounced``, ``unsubscribed`` (extra, 0/1): a fact
    derived from the log like an index entry, not a decision: 1 exactly when
    the send is ``sent`` and an ``email_in`` / non-delayed ``bounce`` (its
    own campaign's, or hard, or of no known campaign) / ``unsubscribe`` of
    the same customer was logged after ``sent_at`` (:data:`FOLLOW_UP_SET_SQL`,
    the per-step SQL it replaces, per row). Triggers keep it so, whatever
    writes the log: recording an event, a message becoming ``sent``,
    ``rekey`` and ``relink_inbound`` moving rows between customers, a
    campaign rename, a row edited or deleted by hand. A send depends only on
    its own columns and on the events of its customer, so the triggers
    recompute: a send whose status, time, customer or campaign changed; the
    sent messages of an event's customer (before and after the change) when
    that event is written, changed or deleted. The send loop pays one
    update by row id with three index probes when a message becomes
    ``sent``; the fetch loop one update of the customer's few earlier
    messages per reply, bounce or unsubscribe. (PostgreSQL: the same
    triggers in its dialect, or a generated view; kept in this module.)

    The columns are filled once here (a few seconds at 400,000 sends). Idempotent (``IF NOT EXISTS``),
    like schema 8, for tests that rebuild an older schema.
    """
    have = {c.name for c in db.table("sends").columns}
    for col in ("replied", "bounced", "unsubscribed"):
        if col not in have:  # tests that rebuild an older schema keep the columns, as v8's indexes
            db.execute(f"ALTER TABLE sends ADD COLUMN {col} INTEGER NOT NULL DEFAULT 0")
    db.execute(f"UPDATE sends SET {FOLLOW_UP_SET_SQL} WHERE status = 'sent'")
    for col in ("replied", "bounced", "unsubscribed"):
        # status and the column in the index too: SQLite 3.40 reads them from the table otherwise
        db.execute(f"CREATE INDEX IF NOT EXISTS idx_sends_{col} ON sends(campaign, step, customer_key, status, {col}) "
                   f"WHERE status = 'sent' AND {col} = 1")
    _follow_up_triggers(db)


def _follow_up_triggers(db: sqlite_utils.Database) -> None:
    """Schema 10's triggers: a send's follow-up flags recomputed whenever what they derive from is written."""
    db.execute(f"CREATE TRIGGER IF NOT EXISTS sends_follow_up_insert AFTER INSERT ON sends WHEN NEW.status = 'sent' "
               f"BEGIN UPDATE sends SET {FOLLOW_UP_SET_SQL} WHERE id = NEW.id; END")
    db.execute(f"CREATE TRIGGER IF NOT EXISTS sends_follow_up_update AFTER UPDATE OF status, sent_at, customer_key, "
               f"campaign ON sends WHEN NEW.status = 'sent' OR OLD.status = 'sent' "
               f"BEGIN UPDATE sends SET {FOLLOW_UP_SET_SQL} WHERE id = NEW.id; END")
    db.execute(f"CREATE TRIGGER IF NOT EXISTS activities_follow_up_insert AFTER INSERT ON activities "
               f"WHEN NEW.kind IN {FOLLOW_UP_KINDS_SQL} AND NEW.customer_key IS NOT NULL "
               f"BEGIN UPDATE sends SET {FOLLOW_UP_SET_SQL} WHERE customer_key = NEW.customer_key "
               f"AND status = 'sent' AND sent_at < COALESCE(NEW.logged_at, NEW.occurred_at); END")
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in
                          ("customer_key", "kind", "logged_at", "occurred_at", "campaign", "details"))
    db.execute(f"CREATE TRIGGER IF NOT EXISTS activities_follow_up_update AFTER UPDATE OF customer_key, kind, "
               f"logged_at, occurred_at, campaign, details ON activities "
               f"WHEN (OLD.kind IN {FOLLOW_UP_KINDS_SQL} OR NEW.kind IN {FOLLOW_UP_KINDS_SQL}) AND ({changed}) "
               f"BEGIN UPDATE sends SET {FOLLOW_UP_SET_SQL} WHERE status = 'sent' "
               f"AND customer_key IN (OLD.customer_key, NEW.customer_key); END")
    db.execute(f"CREATE TRIGGER IF NOT EXISTS activities_follow_up_delete AFTER DELETE ON activities "
               f"WHEN OLD.kind IN {FOLLOW_UP_KINDS_SQL} AND OLD.customer_key IS NOT NULL "
               f"BEGIN UPDATE sends SET {FOLLOW_UP_SET_SQL} WHERE status = 'sent' "
               f"AND customer_key = OLD.customer_key; END")


def create_v11(db: sqlite_utils.Database) -> None:
    """Schema version 11 (issue #21, performance): the stage moves of a period read by time, not every change.

    ``report pipeline --since`` counts the changes of the stage field logged
    in [since, now]. Schema 9's index on ``field_changed`` is by (field,
    customer, time), so a period was found by reading every change of the
    field (249,000 at 100,000 customers, for 63,000 in 30 days: 0.27 s);
    by (field, time) the period is one range (0.13 s). Written only when a
    sync logs a field change: no cost to the send or fetch loops. The field
    is written as ``json_extract(details, '$.field')``, exactly as schema 9's
    index and the query (SQLite uses an expression index only then; the
    PostgreSQL port writes schema 9's expression in its dialect, this one
    the same way). ``IF NOT EXISTS``, as schema 9.
    """
    db.execute("CREATE INDEX IF NOT EXISTS idx_activities_field_changed_at ON activities("
               "json_extract(details, '$.field'), occurred_at) WHERE kind = 'field_changed'")


def create_v12(db: sqlite_utils.Database) -> None:
    """Schema version 12 (issue #20): the workers sharing a log, and who holds each send.

    ``workers``: one row per worker process (``run`` or a stage verb): its
    host and pid, when it started, its last heartbeat and the stage it is
    in; ``stopped_at`` once it has stopped (cleanly, or found dead by
    another). ``crm-automation status`` lists them; the recovery rules take
    only a dead worker's ``sending`` rows.

    ``sends.holder`` (extra): the worker that has claimed a queued send or
    holds it in ``sending`` (NULL: none, or a row from before schema 12).
    ``sends.account`` (extra): the SMTP account a send went through, when
    several are configured (``[[outbound.accounts]]``; NULL: ``[outbound]``'s
    own).
    """
    db.execute("CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, "
               "started_at TEXT NOT NULL, heartbeat_at TEXT NOT NULL, stage TEXT, stopped_at TEXT)")
    have = set(db.table("sends").columns_dict)
    for column in ("holder", "account"):
        if column not in have:  # a log whose recorded migrations were rolled back by hand keeps its columns
            db.execute(f"ALTER TABLE sends ADD COLUMN {column} TEXT")
    db.execute("CREATE INDEX IF NOT EXISTS idx_sends_holder ON sends(holder) WHERE holder IS NOT NULL")
