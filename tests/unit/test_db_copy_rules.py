"""``db copy``'s pure parts (issue #20 item 4): the schema and count checks, the stamp, and the decision."""

from __future__ import annotations

import pytest

from crm_automation.app.dbcopy import Outcome, decide
from crm_automation.errors import ConfigError
from crm_automation.store.copy import Stamp, Table, TargetState, count_problems, schema_problems

URL = "postgresql://crm@db.example.com/crm"
STAMP = Stamp("L1", "2026-12-07T22:00:00+00:00", "123", {"sends": "d1"}, {"sends": 3, "meta": 4})


def _state(tables: dict[str, int], log_id: str | None = "L1", marker: str | None = None,
           stamp: Stamp | None = STAMP, since: dict[str, int] | None = None) -> TargetState:
    return TargetState(tables, log_id, marker, stamp, since or {})


def test_a_count_that_differs_names_the_table_and_both_counts():
    assert count_problems({"runs": 12, "sends": 3}, {"runs": 6, "sends": 3}) == [
        "runs: 12 row(s) in the SQLite log, 6 in PostgreSQL"]
    assert count_problems({"runs": 1}, {}) == ["runs: 1 row(s) in the SQLite log, 0 in PostgreSQL"]
    assert count_problems({"runs": 1}, {"runs": 1}) == []


def test_a_schema_difference_names_the_table_and_the_columns():
    tables = [Table("customers", ("key", "data"), 1), Table("sends", ("id", "status"), 0), Table("old", ("x",), 0)]
    target = {"customers": {"seq": "int8", "key": "text", "data": "text"}, "sends": {"id": "int8"},
              "workers": {"id": "text"}}
    assert schema_problems(tables, target) == ["table workers: only in PostgreSQL",
                                               "table sends: columns ['status'] differ",
                                               "table old: only in the SQLite log"]
    assert schema_problems(tables[:1], {"customers": target["customers"]}) == []  # seq is the rowid's column


def test_the_stamp_reads_back_as_written():
    assert Stamp.from_json(STAMP.to_json()) == STAMP


def test_an_empty_or_new_database_is_copied():
    assert decide("L1", _state({"sends": 0, "meta": 1}, log_id="NEW", stamp=None), URL, dict) is Outcome.COPIED


@pytest.mark.parametrize(("log_id", "marker"), [("L2", None), ("L1", "L2"), ("L2", "L2")])
def test_another_log_or_marker_is_refused_naming_it(log_id, marker):
    with pytest.raises(ConfigError, match="already holds another activity log \\(log id L2; the workspace's "
                                          "SQLite log is L1; meta 2 row\\(s\\), sends 3 row\\(s\\)\\)"):
        decide("L1", _state({"sends": 3, "meta": 2}, log_id=log_id, marker=marker), URL, dict)


def test_this_log_written_since_or_not_from_a_copy_is_refused():
    with pytest.raises(ConfigError, match="written since the copy of 2026-12-07T22:00:00\\+00:00 \\(runs 1 row"):
        decide("L1", _state({"sends": 3, "runs": 1}, since={"runs": 1}), URL, dict)
    with pytest.raises(ConfigError, match="not by a complete db copy"):
        decide("L1", _state({"sends": 3}, stamp=None), URL, dict)


def test_the_digests_tell_nothing_new_from_a_log_that_moved_on():
    state = _state({"sends": 3, "meta": 4})
    assert decide("L1", state, URL, lambda: {"sends": "d1"}) is Outcome.UP_TO_DATE
    assert decide("L1", state, URL, lambda: {"sends": "d2"}) is Outcome.COPIED_AGAIN
