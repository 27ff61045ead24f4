"""The planner's rules, on plain values (no I/O, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from crm_automation.mapping import Campaign, Step
from crm_automation.models import CustomerView
from crm_automation.planner import History
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


# ------------------------------------------------------------ issue #17: steps known by key, edits reviewed

from crm_automation.edits import Review, review  # noqa: E402
from crm_automation.models import StepState  # noqa: E402


def seq(*steps: Step, **kw) -> Campaign:
    return camp(steps=steps, include_existing=True, **kw)


def test_inserted_step_is_skipped_with_the_reason_for_who_is_past_it_and_due_for_the_others():
    c = seq(Step(0, "a"), Step(1, "ins", 1), Step(2, "b", 3))
    h = hist(("c", "a", "past@x", T0), ("c", "b", "past@x", T0 + timedelta(days=3)), ("c", "a", "mid@x", T0))
    out = {(p.customer_key, p.step_id): (p.status, p.reason) for p in
           plan([c], {"past@x": cust("past@x"), "mid@x": cust("mid@x")}, {"c": T0}, h, T0 + timedelta(days=4))}
    assert out[("mid@x", "ins")] == ("queued", None)
    status, reason = out[("past@x", "ins")]
    assert status == "skipped" and "passed it" in reason and "'b'" in reason
    assert ("past@x", "b") not in out and ("mid@x", "b") not in out  # b waits for "ins" to be sent to mid


def test_a_removed_step_is_never_due_and_the_next_one_follows_the_last_sent():
    c = seq(Step(0, "a"), Step(1, "c", 7))  # "b" was step 1 and is gone
    h = hist(("c", "a", "x@x", T0), ("c", "b", "x@x", T0 + timedelta(days=3)))
    assert [p.step_id for p in plan([c], {"x@x": cust("x@x")}, {"c": T0}, h, T0 + timedelta(days=6))] == []
    assert [p.step_id for p in plan([c], {"x@x": cust("x@x")}, {"c": T0}, h, T0 + timedelta(days=7))] == ["c"]


def test_follow_up_days_count_from_the_first_email_sent_whatever_its_key_now():
    c = seq(Step(0, "new-first"), Step(1, "b", 3))
    # The first email's step was replaced (the old one retired) after the customer had it: the clock stays.
    h = hist(("c", "old-first", "x@x", T0), ("c", "new-first", "x@x", T0 + timedelta(days=2)))
    out = plan([c], {"x@x": cust("x@x")}, {"c": T0}, h, T0 + timedelta(days=3))
    assert [(p.step_id, p.status) for p in out] == [("b", "queued")]
    assert plan([c], {"x@x": cust("x@x")}, {"c": T0}, h, T0 + timedelta(days=2, hours=23)) == []


def test_a_step_held_by_an_unclear_edit_waits_only_for_who_had_the_step_it_may_replace():
    c = seq(Step(0, "a"), Step(1, "b2", 3))
    h = hist(("c", "a", "had@x", T0), ("c", "b", "had@x", T0 + timedelta(days=3)), ("c", "a", "new@x", T0))
    result = plan_all([c], {"had@x": cust("had@x"), "new@x": cust("new@x")}, {"c": T0}, h, T0 + timedelta(days=5),
                      unresolved={("c", "b2"): ("b",)})
    assert [(p.customer_key, p.step_id) for p in result.sends] == [("new@x", "b2")]
    assert "appeared" in result.held["c"][0] and "renamed_from = 'b'" in result.held["c"][0]


def test_a_new_campaign_reusing_a_template_a_removed_one_sent_is_held_whole_unless_resend():
    h = hist(elsewhere={"a@x": {"offer": "old"}})
    c = camp(id="new", steps=(Step(0, "offer"),), include_existing=True)
    people = {"a@x": cust("a@x"), "b@x": cust("b@x")}
    result = plan_all([c], people, {"new": T0}, h, T0)
    assert result.sends == [] and "'old'" in result.held["new"][0]
    result = plan_all([camp(id="new", steps=(Step(0, "offer", resend=True),), include_existing=True, resend=True)],
                      people, {"new": T0}, h, T0)
    assert len(result.sends) == 2 and not result.held


def state(*steps: tuple[str, int], retired: tuple[str, ...] = ()) -> dict[str, StepState]:
    return {k: StepState(k, n, k in retired) for k, n in steps}


def test_review_records_a_first_seen_campaign_and_sees_no_change_the_second_time():
    c = seq(Step(0, "a"), Step(1, "b", 3))
    first = review([c], {}, {})
    assert first.states == {"c": state(("a", 0), ("b", 1))} and not first.changes
    assert review([c], first.states, {}) == Review()


def test_review_retires_a_removed_step_at_once_when_nothing_appears_with_it():
    c = seq(Step(0, "a"))
    found = review([c], {"c": state(("a", 0), ("b", 1))}, {("c", "b"): 4})
    assert found.states["c"]["b"].retired and not found.unresolved
    assert found.changes["c"] == ["step 'b' removed (4 had it)"]
    # Inserting a step later is then no rename: nothing is held.
    later = review([seq(Step(0, "a"), Step(1, "x", 2))], found.states, {("c", "b"): 4})
    assert not later.unresolved and later.changes["c"] == ["step 'x' inserted as follow-up 1"]


def test_review_holds_a_step_appearing_with_a_sent_one_disappearing_until_resolved():
    rec = {"c": state(("a", 0), ("b", 1))}
    sent = {("c", "a"): 3, ("c", "b"): 2}
    found = review([seq(Step(0, "a"), Step(1, "b2", 3))], rec, sent)
    assert found.unresolved == {("c", "b2"): ("b",)} and not found.states["c"]["b"].retired
    again = review([seq(Step(0, "a"), Step(1, "b2", 3))], found.states, sent)  # lasts until resolved
    assert again.unresolved == {("c", "b2"): ("b",)}
    renamed = review([seq(Step(0, "a"), Step(1, "b2", 3, renamed_from="b"))], found.states, sent)
    assert renamed.step_renames == (("c", "b", "b2"),) and not renamed.unresolved
    assert set(renamed.states["c"]) == {"a", "b2"}
    resent = review([seq(Step(0, "a"), Step(1, "b2", 3, resend=True))], found.states, sent)
    assert not resent.unresolved and resent.states["c"]["b"].retired and not resent.step_renames


def test_review_of_a_step_never_sent_to_anyone_holds_nothing():
    found = review([seq(Step(0, "a"), Step(1, "b2", 3))], {"c": state(("a", 0), ("b", 1))}, {("c", "a"): 3})
    assert not found.unresolved


def test_review_carries_a_renamed_campaign_over():
    rec = {"old": state(("a", 0), ("b", 1))}
    found = review([seq(Step(0, "a"), Step(1, "b", 3), id="new", renamed_from="old")], rec, {("old", "a"): 5})
    assert found.campaign_renames == (("old", "new"),)
    assert found.aliases() == ({"old": "new"}, {})
    assert set(found.states["new"]) == {"a", "b"}
    # Once applied (nothing left under "old"), the same file asks for nothing more.
    assert review([seq(Step(0, "a"), Step(1, "b", 3), id="new", renamed_from="old")], found.states,
                  {("new", "a"): 5}).campaign_renames == ()
