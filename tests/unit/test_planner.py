"""The planner's rules, on plain values (no I/O, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from crm_automation.mapping import Campaign, Step
from crm_automation.planner import CustomerView, History
from crm_automation.planner import plan as plan_all


def plan(*args, **kw):
    """The planned sends only (the held campaigns are checked by the edit tests)."""
    return plan_all(*args, **kw).sends


def hist(*sends, **kw) -> History:
    """History with ``sends``: (campaign, step key, customer, sent_at or None)."""
    h = History(**kw)
    for s in sends:
        h.add_send(*s)
    return h

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def camp(**kw) -> Campaign:
    base = {"id": "c", "trigger": "new", "steps": (Step(0, "a"),), "where": {}, "stop_on": frozenset(
        {"reply", "bounce", "unsubscribe"})}
    base.update(kw)
    return Campaign(**base)


def cust(key: str, first_seen: datetime = T0, status: str = "ok", **data) -> CustomerView:
    return CustomerView(key, key, {"email": key, **data}, first_seen, status)


def test_new_campaign_never_mails_existing_customers():
    customers = {"old@x": cust("old@x", T0), "new@x": cust("new@x", T0 + timedelta(days=2))}
    out = plan([camp()], customers, {"c": T0 + timedelta(days=1)}, History(), T0 + timedelta(days=3))
    assert [(p.customer_key, p.status) for p in out] == [("new@x", "queued")]


def test_include_existing_mails_everyone_in_segment():
    customers = {"a@x": cust("a@x", stage="lead"), "b@x": cust("b@x", stage="won")}
    c = camp(include_existing=True, where={"stage": ("lead",)})
    out = plan([c], customers, {"c": T0 + timedelta(days=1)}, History(), T0 + timedelta(days=3))
    assert [p.customer_key for p in out] == ["a@x"]


def test_already_recorded_sends_are_not_planned_again():
    customers = {"a@x": cust("a@x")}
    h = hist(("c", "a", "a@x", None))
    assert plan([camp(include_existing=True)], customers, {"c": T0}, h, T0) == []


def test_suppressed_and_bounced_are_recorded_as_skipped():
    customers = {"a@x": cust("a@x"), "b@x": cust("b@x", status="bounced"), "c@x": cust("c@x")}
    h = History(suppressed=frozenset({"a@x"}))
    out = {p.customer_key: (p.status, p.reason) for p in plan([camp(include_existing=True)], customers, {"c": T0}, h, T0)}
    assert out == {"a@x": ("skipped", "suppressed"), "b@x": ("skipped", "bounced"), "c@x": ("queued", None)}


def test_change_trigger_only_for_changes_after_campaign_first_seen():
    customers = {"a@x": cust("a@x", stage="quote"), "b@x": cust("b@x", stage="quote"), "c@x": cust("c@x", stage="lead")}
    h = History(changes={"stage": [("a@x", "quote", T0 - timedelta(days=1)), ("b@x", "quote", T0 + timedelta(hours=1)),
                                   ("c@x", "quote", T0 + timedelta(hours=1))]})
    c = camp(trigger="change", field="stage", to="quote")
    out = plan([c], customers, {"c": T0}, h, T0 + timedelta(days=1))
    # a changed before the campaign existed; c changed to quote but has moved on since.
    assert [p.customer_key for p in out] == ["b@x"]


def test_at_trigger_waits_for_its_time():
    customers = {"a@x": cust("a@x")}
    c = camp(trigger="at", at=T0 + timedelta(days=5))
    assert plan([c], customers, {"c": T0}, History(), T0 + timedelta(days=4)) == []
    assert len(plan([c], customers, {"c": T0}, History(), T0 + timedelta(days=5))) == 1


def test_follow_up_after_days_counted_from_first_send_and_stopped_by_reply():
    c = camp(steps=(Step(0, "a"), Step(1, "b", 3), Step(2, "c", 7)))
    customers = {"a@x": cust("a@x"), "r@x": cust("r@x")}
    sent = T0 + timedelta(days=1)
    h = hist(("c", "a", "a@x", sent), ("c", "a", "r@x", sent), inbound={"r@x": [("email_in", sent + timedelta(days=1))]})
    assert plan([c], customers, {"c": T0}, h, sent + timedelta(days=2, hours=23)) == []
    out = {p.customer_key: (p.step, p.status) for p in plan([c], customers, {"c": T0}, h, sent + timedelta(days=3))}
    assert out == {"a@x": (1, "queued"), "r@x": (1, "skipped")}


def test_auto_reply_does_not_stop_a_sequence():
    c = camp(steps=(Step(0, "a"), Step(1, "b", 3)))
    sent = T0
    h = hist(("c", "a", "a@x", sent), inbound={"a@x": [("auto_reply", sent + timedelta(hours=1))]})
    out = plan([c], {"a@x": cust("a@x")}, {"c": T0}, h, sent + timedelta(days=4))
    assert [(p.step, p.status) for p in out] == [(1, "queued")]


def test_reply_before_first_send_does_not_stop():
    c = camp(steps=(Step(0, "a"), Step(1, "b", 3)))
    h = hist(("c", "a", "a@x", T0), inbound={"a@x": [("email_in", T0 - timedelta(days=1))]})
    out = plan([c], {"a@x": cust("a@x")}, {"c": T0}, h, T0 + timedelta(days=4))
    assert [p.status for p in out] == ["queued"]


def test_one_email_per_customer_per_cycle():
    c1 = camp(id="one", include_existing=True)
    c2 = camp(id="two", include_existing=True)
    out = plan([c1, c2], {"a@x": cust("a@x")}, {"one": T0, "two": T0}, History(), T0)
    assert [(p.campaign, p.status) for p in out] == [("one", "queued")]
    out = plan([c1, c2], {"a@x": cust("a@x")}, {"one": T0, "two": T0}, History(), T0, one_per_cycle=False)
    assert len(out) == 2


def test_no_email_address_is_skipped():
    v = CustomerView("k1", None, {}, T0, "ok")
    out = plan([camp(include_existing=True)], {"k1": v}, {"c": T0}, History(), T0)
    assert [(p.status, p.reason) for p in out] == [("skipped", "no email address")]
