"""The send pass in three parts, plus the kinds of message it hands over (issue #18 item 2).

Read in this order; imports go down the list, never up::

    stage.py     SendPass: the order of one pass (recovery, guards, plan and queue, dispatch) - nothing else
    recovery.py  what a killed process left in ``sending``: found handed over, requeued, or ``uncertain``
    dispatch.py  window, pacing, limits, composing, hand-over, SMTP outcome mapping, the 5xx breaker,
                 RCPT hard bounces; the exactly-once sequence for one send
    kinds.py     the message kinds (campaign step, owner notification; owner digest next, issue #21):
                 what each needs at hand-over and how it is composed
    plan.py      what is due, written as queued sends: the candidates' history read once, the pure planner
    candidates.py  whom to plan: what the log is asked instead of read whole (issue #23)

The rules themselves live in the pure core (:mod:`crm_automation.planner`,
:mod:`crm_automation.edits`); this package does the I/O around them.
"""
