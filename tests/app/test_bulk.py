"""collector_paused (crm_automation/app/bulk.py): the cyclic collector off inside, back as it was after."""

from __future__ import annotations

import gc
import threading

import pytest

from crm_automation.app.bulk import collector_paused


def test_the_collector_is_off_inside_and_back_on_after_even_on_an_error():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(KeyError), collector_paused():
        raise KeyError("x")
    assert gc.isenabled()


def test_a_collector_switched_off_by_the_program_stays_off():
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_overlapping_pauses_from_threads_end_with_the_collector_on_only_after_the_last():
    inside, release = threading.Event(), threading.Event()

    def long_read() -> None:
        with collector_paused():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=long_read)
    t.start()
    assert inside.wait(10)
    with collector_paused():
        pass
    assert not gc.isenabled()  # the other thread's read is still going on
    release.set()
    t.join(10)
    assert gc.isenabled()


def test_the_digests_and_the_pipeline_run_with_the_collector_paused(monkeypatch):
    from crm_automation.app import digest, pipeline

    seen: list[bool] = []
    monkeypatch.setattr(digest, "sales_rows", lambda *a, **k: seen.append(gc.isenabled()) or [])
    monkeypatch.setattr(pipeline, "read_rows", lambda *a, **k: seen.append(gc.isenabled()) or None)
    monkeypatch.setattr(pipeline, "compute", lambda *a, **k: None)

    class Roles:
        owner = "owner"

    class Ws:
        class mapping:  # noqa: N801
            roles = Roles

        class cfg:  # noqa: N801
            timezone = None

    class Store:
        def suppressed_among(self, owners):
            return set()

    import contextlib

    monkeypatch.setattr(pipeline, "reading", lambda ws: contextlib.nullcontext(Store()))
    digest.digests_in(Ws, Store(), None)  # type: ignore[arg-type]
    pipeline.pipeline(Ws, None)  # type: ignore[arg-type]
    assert seen == [False, False] and gc.isenabled()
