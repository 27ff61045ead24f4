"""The application layer (issue #18): one function per use case, shared by the CLI and the web app.

Each use case takes the workspace (and ``now`` where time matters), reads
or writes the log through the store's methods, and returns a frozen
dataclass whose ``to_json()`` is plain JSON data. The CLI parses arguments
and renders these results; the web app (issue #19) renders the same ones.
Nothing here imports click or rich, prints, or exits.

- ``reports.py``: ``report`` (what ``crm-automation report`` shows),
  ``funnel``, ``attention`` (uncertain and failed sends, quarantine, recent
  replies), ``timeline``, ``health`` (each stage's last run, the queue).
- ``customers.py``: ``search``.
- ``sends.py``: ``requeue``.
- ``quarantine.py``: ``message`` (one quarantined message with its bytes).
- ``suppressions.py``: ``suppress``, ``unsuppress``, ``suppressions``,
  ``unsubscribe_by_token``, ``resubscribe_by_token`` (its undo, issue #19).
- ``tracking.py``: ``record_click``, ``record_open`` (issue #19: a tracked
  link followed, a message opened).
- ``access.py``: how a use case reaches the log — read-only, or for one
  short write beside a running worker (no workspace lock: issue #19); and
  ``WorkspaceLock``, which only the stages hold.
- ``results.py``: the JSON value type and the conversions every result uses.
- ``links.py``: ``link`` (does a token name one of our sends; read-only), and
  ``liveness.py``: ``liveness`` (``serve``'s ``/healthz``; issue #19).

Imports go down only: ``app`` imports the stages, the core, the store and
the models; nothing below imports ``app``. Modules are imported one by one
(this file imports none of them), so a verb loads only what it uses.
"""
