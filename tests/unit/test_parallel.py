"""OrderedPool: reading mail on the other cores gives the same results, in order, and leaves nothing behind.

Real helper processes throughout (``python -m crm_automation.parallel``); the
pool is forced to use them from the first item (``start_after=0``) with small
chunks, so every path — remote, computed here, a helper lost — is taken.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from crm_automation.parallel import OrderedPool
from crm_automation.reading import ReadPolicy, Unreadable, read, read_chunk

CORPUS = Path(__file__).resolve().parents[1] / "data" / "eml"
REPO = Path(__file__).resolve().parents[2]

# Odd inputs the corpus does not have: not mail, empty, over the size limit, deep nesting, raw 8-bit headers.
ODD = [
    b"",
    b"\x00\x01 not an email \xff\xfe" * 5,
    b"From: a@x.test\r\nSubject: \xc4\xe3\xba\xc3\r\n\r\n\xc4\xe3\xba\xc3\r\n",  # GBK bytes, no label
    b"From: a@x.test\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\nContent-Type: multipart/"
    b"mixed; boundary=b\r\n\r\n" * 40,
    b"From: big@x.test\r\n\r\n" + b"x" * 5000,
]


@pytest.fixture(autouse=True)
def _no_helper_outlives_its_test():
    """Each test starts and ends with no helper of this process running (issue #17: random order).

    A test that stops reading early (``break``) leaves its helpers to exit on
    their own a moment later; the next test's "no process was started" check
    then saw them, depending on which test ran before it.
    """
    gone_within(lambda: not helper_pids(os.getpid()))
    yield
    gone_within(lambda: not helper_pids(os.getpid()))


def corpus() -> list[bytes]:
    return [p.read_bytes() for p in sorted(CORPUS.rglob("*.eml"))] + ODD


def square(state: int, items: list[int]) -> list[int]:
    """A helper's function for the generic tests (module-level: helpers import it by name)."""
    if -1 in items:
        raise ValueError("a chunk with -1 fails wherever it runs")
    return [x * x + state for x in items]


def slow_square(state: int, items: list[int]) -> list[int]:
    time.sleep(0.01)
    return [x * x + state for x in items]


def test_reading_on_helpers_gives_what_reading_here_gives_for_the_whole_corpus():
    """Same parse, classification, digest and quarantine reason for every corpus message and odd input."""
    raws = corpus() * 5
    assert len(raws) > 400
    policy = ReadPolicy(4096, frozenset({"unsubscribe@example.com"}), frozenset({"c1@example.com"}))
    def prepare(b: bytes) -> tuple[bytes, int | None]:
        time.sleep(0.002)  # a mailbox's pace: the helpers are up for most of the map, even on a busy machine
        return b, len(b) if len(b) > 4096 else None

    pool = OrderedPool(read_chunk, lambda: policy, prepare, helpers=2, chunk=7, start_after=0)
    out = list(pool.map(raws))
    assert pool.started == 2 and pool.remote_chunks > 10
    assert [raw for raw, _ in out] == raws  # in order
    for raw, there in out:
        here = read(raw, len(raw) if len(raw) > 4096 else None, policy)
        assert there == here, raw[:200]
    assert sum(isinstance(w, Unreadable) for _, w in out) >= 5 * (len(ODD) - 1)  # the odd ones


def test_results_come_in_input_order_whoever_computes_them():
    pool = OrderedPool(slow_square, lambda: 5, lambda x: x, helpers=2, chunk=3, start_after=4)
    out = list(pool.map(range(200)))
    assert out == [(x, x * x + 5) for x in range(200)]
    assert pool.remote_chunks > 0


def test_a_failing_chunk_is_computed_here_and_fails_here_too():
    pool = OrderedPool(square, lambda: 0, lambda x: x, helpers=1, chunk=2, start_after=0)
    it = pool.map([1, 2, 3, -1, 5])
    assert next(it) == (1, 1)
    with pytest.raises(ValueError, match="fails wherever it runs"):
        list(it)


def test_a_helper_killed_mid_map_loses_nothing():
    pool = OrderedPool(slow_square, lambda: 0, lambda x: x, helpers=2, chunk=5, start_after=0)
    out = []
    killed = []
    for i, (x, y) in enumerate(pool.map(range(300))):
        out.append((x, y))
        if i == 40:
            gone_within(lambda: bool(helper_pids(os.getpid())))  # wait for them to be up (a busy machine)
            for pid in helper_pids(os.getpid()):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    assert killed
    assert out == [(x, x * x) for x in range(300)]


def test_the_input_is_read_lazily_and_in_bounded_steps():
    pulled = []

    def source():
        for i in range(10_000):
            pulled.append(i)
            yield i

    pool = OrderedPool(slow_square, lambda: 0, lambda x: x, helpers=2, chunk=10, start_after=5, depth=2, ahead=0)
    for i, _ in pool.map(source()):
        # At most start_after + (helpers * depth + 1) chunks of 10 ahead of what was handed on.
        assert len(pulled) - i <= 5 + 5 * 10 + 10
        if i == 500:
            break
    assert len(pulled) < 600


def test_the_weight_in_flight_is_bounded_too():
    """Big messages: the byte budget stops reading ahead long before the chunk count does."""
    pulled = []

    def source():
        for i in range(2_000):
            pulled.append(i)
            yield i

    pool = OrderedPool(slow_square, lambda: 0, lambda x: x, helpers=2, chunk=10, start_after=0, ahead=40,
                       weigh=lambda x: 100, budget=2_000)
    ahead = 0
    for i, _ in pool.map(source()):
        ahead = max(ahead, len(pulled) - i)
    assert ahead <= 2_000 // 100 + 2 * 10, ahead
    assert pool.remote_chunks > 0


def test_an_early_stop_and_the_end_leave_no_helper_running():
    pool = OrderedPool(slow_square, lambda: 0, lambda x: x, helpers=2, chunk=5, start_after=0)
    for i, _ in pool.map(range(1000)):
        if i == 100:
            gone_within(lambda: bool(helper_pids(os.getpid())))  # they are up (waits on a busy machine)
            break
    gone_within(lambda: not helper_pids(os.getpid()))


def test_helpers_exit_when_their_parent_is_killed_and_never_see_its_environment(tmp_path):
    """SIGKILL of the worker (the kill tests' case): each helper reads end-of-file and exits."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from tests.unit.test_parallel import slow_square
        from crm_automation.parallel import OrderedPool
        pool = OrderedPool(slow_square, lambda: 0, lambda x: x, helpers=2, chunk=5, start_after=0)
        for i, _ in pool.map(range(10**9)):
            if i == 50:
                print("running", flush=True)
            time.sleep(0.001)
    """), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CRM_TEST_SECRET_PASSWORD": "s3cret-value"}
    parent = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "running"
        pids = []
        deadline = time.monotonic() + 10
        while len(pids) < 2 and time.monotonic() < deadline:
            pids = helper_pids(parent.pid)
            time.sleep(0.05)
        assert len(pids) == 2
        for pid in pids:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"s3cret-value" not in environ and b"CRM_TEST_SECRET" not in environ
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
    gone_within(lambda: not any(Path(f"/proc/{pid}").exists() and b"crm_automation.parallel" in
                                Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids))


def helper_pids(parent: int) -> list[int]:
    """Running helper processes whose parent is ``parent``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"crm_automation.parallel" in cmd and state != "Z":
            out.append(int(d.name))
    return out


def gone_within(check, seconds: float = 10) -> None:
    """Wait until ``check()`` holds (helpers gone, or up), failing after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the helper processes did not get there in time"
        time.sleep(0.05)


def test_a_helper_that_cannot_load_the_function_leaves_all_the_work_here(capfd):
    """A function helpers cannot import (here: a local one) — they exit at once, the results are still whole."""
    def local_square(state: int, items: list[int]) -> list[int]:
        time.sleep(0.005)
        return [x * x + state for x in items]

    pool = OrderedPool(local_square, lambda: 1, lambda x: x, helpers=2, chunk=5, start_after=0)
    out = list(pool.map(range(800)))
    assert out == [(x, x * x + 1) for x in range(800)]
    assert pool.remote_chunks == 0
    gone_within(lambda: not helper_pids(os.getpid()))
    if pool.started:  # they started (the usual case) and said why they left, in one line
        err = capfd.readouterr().err
        assert "crm-automation helper: cannot load" in err and "Traceback" not in err


def test_eager_starts_helpers_with_the_first_item_and_never_for_nothing():
    pool = OrderedPool(slow_square, lambda: 0, lambda x: x, helpers=1, chunk=5, start_after=10_000)
    assert list(pool.map(iter(()), eager=True)) == []
    time.sleep(0.3)
    assert pool.started == 0 and not helper_pids(os.getpid())  # an empty folder polled: no process
    out = list(pool.map(range(300), eager=True))
    assert out == [(x, x * x) for x in range(300)]
    assert pool.started == 1 and pool.remote_chunks > 0  # start_after did not hold it back


def test_what_was_read_before_the_input_fails_is_handed_on_then_the_error_raised():
    def source():
        yield from range(17)
        raise ConnectionError("the mailbox dropped")

    for eager in (False, True):
        pool = OrderedPool(slow_square, lambda: 0, lambda x: x, helpers=1, chunk=50, start_after=5)
        got: list[tuple[int, int]] = []
        with pytest.raises(ConnectionError, match="dropped"):
            got.extend(pool.map(source(), eager=eager))
        assert got == [(x, x * x) for x in range(17)], eager


def test_a_trickling_input_makes_short_chunks_not_a_wait_for_a_full_one():
    """A chunk is cut when it is ``linger`` seconds old: a slow mailbox's messages are not held for 50 more."""
    def source():
        for i in range(80):
            time.sleep(0.01)
            yield i

    pool = OrderedPool(square, lambda: 0, lambda x: x, helpers=1, chunk=50, linger=0.05)
    it = source()
    sizes = []
    while True:
        chunk, failed = pool._fill(it)
        assert failed is None
        if not chunk:
            break
        sizes.append(len(chunk))
    assert sum(sizes) == 80
    assert max(sizes) <= 10, sizes  # about five items of 10 ms each fit in 0.05 s; a full chunk would be 50


def test_ctrl_c_to_the_process_group_leaves_helpers_quiet_until_their_parent_goes(tmp_path):
    """SIGINT (Ctrl-C) reaches every process of the group; a helper ignores it and exits with its parent."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import signal, sys, time
        from tests.unit.test_parallel import slow_square
        from crm_automation.parallel import OrderedPool
        signal.signal(signal.SIGINT, lambda *a: sys.exit(0))
        pool = OrderedPool(slow_square, lambda: 0, lambda x: x, helpers=1, chunk=5, start_after=0)
        for i, _ in pool.map(range(10**9)):
            if i == 50:
                print("running", flush=True)
            time.sleep(0.001)
    """), encoding="utf-8")
    parent = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert parent.stdout is not None and parent.stdout.readline().strip() == "running"
    gone_within(lambda: len(helper_pids(parent.pid)) == 1)
    pids = helper_pids(parent.pid)
    os.killpg(parent.pid, signal.SIGINT)
    _, err = parent.communicate(timeout=20)
    assert parent.returncode == 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    gone_within(lambda: not any(Path(f"/proc/{pid}").exists() and b"crm_automation.parallel" in
                                Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids))


def test_the_state_is_made_once_on_the_first_item_and_never_for_nothing():
    """For the fetch stage the state is the customers' addresses: a poll that finds no mail never loads them."""
    made = []

    def make() -> int:
        made.append(1)
        return 2

    pool = OrderedPool(square, make, lambda x: x, helpers=1, chunk=5, start_after=3)
    assert list(pool.map(iter(()))) == [] and list(pool.map(iter(()), eager=True)) == []
    assert made == []
    assert list(pool.map(range(40))) == [(x, x * x + 2) for x in range(40)]
    assert made == [1]
