"""The activity log (a SQLite file, or PostgreSQL: issue #20): the only SQL in the project, split by what it records.

Callers use one object, :class:`crm_automation.store.repo.Store`
(``Store.open(path)``), composed of one part per module, all sharing its
connection:

- ``connection.py``: opening and migrating the file, the guarded connection
  (a full disk or a read-only folder becomes a :class:`StorageError`
  naming the file, issue #9), ``transaction()``, the file's identity and
  ``log_id``; the log's time format (``iso``/``parse_iso``).
- ``customers.py``: customers and each sync's changes, the sheet's digest
  (``SheetState``), email status, the address index.
- ``activities.py``: activities (``Activity``, ``InboundEvent``), the
  quarantine, the soft-bounce count, ``timeline``.
- ``inbound.py``: fetched mail — one message's decision applied with the
  folder's cursor in one transaction (``apply_inbound``), mail linked to
  customers added later (``relink_inbound``), the cursor and Maildir names.
- ``sends.py``: the send lifecycle (:class:`~crm_automation.models.SendStatus`,
  ``SendRow``, ``SentRef``) and when each campaign was first seen.
- ``suppressions.py``: the suppression list (``Suppression``).
- ``tracking.py``: tracked links, clicks and opens (issue #19, ``TokenSend``).
- ``reports.py``: the funnel (``FunnelRow``), last contact times
  (``LastTimes``), row counts, stage runs.
- ``schema.py`` + ``migrations.py``: the tables, named transactional
  migrations; ``identity.py``: the workspace's marker of its log.
- ``dialect.py``: what SQLite and PostgreSQL spell differently, in one
  place (one text per query); ``postgres.py`` + ``schema_pg.py``: the
  PostgreSQL connection and the same named migrations in its DDL;
  ``location.py``: a path or a URL, and a URL shown without its password.
- ``protocols.py``: the public surface, one typed protocol per part
  (customers, activities, fetched mail, sends, suppressions, reports), which
  another backend (PostgreSQL, issue #20) implements; mypy checks that
  :class:`~crm_automation.store.repo.Store` satisfies them.

Results are frozen dataclasses with decoded values: no caller parses JSON
from the log or unpacks a tuple by position. An activity's ``details`` is
read back as the record of its kind (``crm_automation.models.ActivityDetails``,
each shape documented there).

The store records and decides nothing (issue #18): it imports only
``store/``, :mod:`crm_automation.models` and :mod:`crm_automation.errors`.
The rules (which email status a suppression reason sets, when soft bounces
suppress an address) live in :mod:`crm_automation.effects` and reach the
store as values (``Effect``) or as a pure function it applies to a count it
reads inside its transaction (``ScoredBounce.rule``, ``status_of``).

Who owns a transaction — one rule:

    Every public method that writes is atomic on its own: it runs inside
    ``transaction()`` (a writer of one statement, like ``mark_sending`` on
    the send pass's hot path, is atomic by itself and needs none). Outside
    any transaction that is ``BEGIN IMMEDIATE``
    ... ``COMMIT``, one commit; inside a caller's transaction it nests as a
    ``SAVEPOINT``, which costs no commit and rolls back alone on an error.
    A caller that needs several writes to commit together (a message's
    ``sent`` record with the next one's ``sending`` mark; a suppression with
    the customer's status) wraps them in ``with store.transaction():``.

    The module-level functions of these modules (``insert_activity``,
    ``insert_sends``, ``insert_suppression``, ``update_email_status``, ...)
    are the building blocks of those methods: they never open or commit a
    transaction and are called only inside one, by a method of the store
    that owns it (``apply_inbound`` uses them to write a message's records
    and cursor in one transaction without a savepoint per row).

Reads take no transaction (WAL: they see the last commit, or the caller's
own uncommitted writes inside its transaction).
"""
