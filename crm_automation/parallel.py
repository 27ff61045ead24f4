"""A pure function over a stream, on the other cores, results in input order.

Why (issue #13): reading a message — MIME parsing, charset decoding, reply
extraction, classification — is pure Python and was most of a large fetch,
while the mailbox and the log (which must stay in this process and in
mailbox order) were the rest. :class:`OrderedPool` lets helper processes do
the pure part for chunks of the stream while this process fetches, decides
and commits; the results come back in the order of the input, so the caller
commits in mailbox order exactly as before.

Properties the fetch stage relies on:

- **Lazy and bounded.** Items are pulled from the input only as results are
  handed on: at most ``ahead`` chunks, and ``budget`` bytes of mail, are in
  flight.
- **Nothing for small work.** The first ``start_after`` items are computed
  here, one at a time, with no process started: a poll or a small fetch
  costs what it did before (``eager`` skips this for a mailbox read from its
  start; an empty input starts nothing either way). The helpers start in the
  background after that, and until they are ready (and whenever they are all
  busy) this process computes the next chunk itself, so no core waits. A
  chunk goes when it is full or ``linger`` seconds old, so a slow input is
  not held back.
- **The same results either way.** Helpers run the very function this
  process runs; a helper that dies or fails has its chunks computed here.
- **No orphans, no secrets.** A helper is a fresh interpreter
  (``python -m crm_automation.parallel``) talking over its standard input
  and output: when this process ends, even by SIGKILL, the helper reads
  end-of-file and exits. It is not a fork of this process (which has
  threads, the log and the mailbox connection open), it never imports the
  program's main module (as multiprocessing's spawn and forkserver do), and
  its environment holds only ``PATH`` and ``PYTHONPATH``: the mailbox
  password never reaches it.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from itertools import chain, islice
from multiprocessing.connection import Connection
from typing import Generic, TypeVar

try:
    import fcntl
except ImportError:  # not POSIX: no helpers (default_helpers), so no pipes to widen
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("crm_automation")

S = TypeVar("S")
T = TypeVar("T")
P = TypeVar("P")  # an item as ``prepare`` hands it to ``fn`` (plain values, picklable)
R = TypeVar("R")


def default_helpers() -> int:
    """One helper per core beyond this process's own, at most three (the log's writer is the limit then).

    None where pipes cannot be polled (not POSIX): mail is then read here.
    """
    if os.name != "posix" or fcntl is None:
        return 0
    return max(0, min(3, (os.cpu_count() or 1) - 1))


def _helper_main() -> None:
    """A helper process: the function and state first, then compute each chunk received, until end-of-file.

    A thread reads the chunks as they come, so the parent's writes never wait
    while this process waits for the parent to take a result (two full pipes
    would otherwise wait for each other).
    """
    # Ctrl-C in a terminal reaches the whole process group: the worker stops cleanly and this process
    # leaves at end-of-file, without a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inp = Connection(os.dup(0), writable=False)
    out = Connection(os.dup(1), readable=False)
    sys.stdout = sys.stderr  # nothing may write into the results pipe
    chunks: queue.SimpleQueue[tuple[str, str, object] | list[object] | None] = queue.SimpleQueue()

    def reader() -> None:
        while True:
            try:
                chunks.put(inp.recv())
            except (EOFError, OSError):
                chunks.put(None)
                return

    threading.Thread(target=reader, daemon=True).start()
    first = chunks.get()
    if first is None:
        return
    if not isinstance(first, tuple):  # never: the parent sends (module, function, state) first
        return
    module, name, state = first
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:  # the parent sees end-of-file and reads on its own
        sys.stderr.write(f"crm-automation helper: cannot load {module}.{name}: {e}\n")
        return
    while (chunk := chunks.get()) is not None:
        try:
            result: tuple[bool, object] = (True, fn(state, chunk))
        except Exception as e:  # noqa: BLE001 -- reported to the parent, which computes the chunk itself
            result = (False, f"{type(e).__name__}: {e}")
        try:
            out.send(result)
        except (BrokenPipeError, EOFError, OSError):
            return


def _widen(fd: int) -> None:
    """Give a pipe a 1 MiB buffer (Linux), so sending a chunk rarely waits for the helper to read it.

    With the default 64 KiB, a chunk of mail did not fit: the write waited
    for the helper's reader thread, which waits for the GIL behind the
    helper's own work (0.4 s of a 10,000-message fetch).
    """
    size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if size is not None:
        with suppress(OSError):
            fcntl.fcntl(fd, size, 1 << 20)


@dataclass(eq=False)
class _Helper:
    process: subprocess.Popen[bytes]
    send: Connection
    recv: Connection
    busy: int = 0
    alive: bool = True


class _Crew:
    """The helpers of one :meth:`OrderedPool.map`, started in the background and dismissed at its end.

    Why a lock: the map may end (a short fetch) while helpers are still
    starting; a helper that joins after that is stopped at once instead.
    """

    def __init__(self) -> None:
        self.helpers: list[_Helper] = []
        self._lock = threading.Lock()
        self._dismissed = False

    def join(self, h: _Helper) -> bool:
        """Add a started helper; False (and it is stopped) when the map has already ended."""
        with self._lock:
            if not self._dismissed:
                self.helpers.append(h)
                return True
        _stop([h])
        return False

    def dismiss(self) -> None:
        """End every helper: closing both pipes ends it even mid-chunk; reaped in the background."""
        with self._lock:
            self._dismissed = True
            helpers = list(self.helpers)
        if helpers:
            threading.Thread(target=_stop, args=(helpers,), name="crm-readers-stop", daemon=True).start()


def _stop(helpers: list[_Helper]) -> None:
    for h in helpers:
        for conn in (h.send, h.recv):
            with suppress(OSError):
                conn.close()  # end-of-file for its reader, a broken pipe for its writer: it exits
    for h in helpers:
        try:
            h.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            h.process.kill()
            h.process.wait(timeout=5)


@dataclass(eq=False)
class _Entry(Generic[T, R]):
    items: list[T]
    weight: int = 0
    helper: _Helper | None = None
    results: list[R] | None = None


@dataclass
class OrderedPool(Generic[S, T, P, R]):
    """Runs ``fn(state, [prepare(item), ...]) -> results`` (one per item) over a stream; see the module docstring.

    ``fn`` must be a module-level function and the state picklable: both are
    sent to each helper once, when it starts. The state is made by
    ``make_state()``, in this thread, when the first item comes: a poll that
    finds nothing never builds it (for the fetch stage: never loads the
    customers' addresses). ``prepare`` picks from each item what ``fn``
    needs (plain values pickle several times faster than dataclasses); the
    items themselves never leave this process.
    """

    fn: Callable[[S, list[P]], list[R]]
    make_state: Callable[[], S]
    prepare: Callable[[T], P]
    # Measured on 10,000 messages, 2 cores (issue #13): chunks of 50 and up to 8 per helper keep the
    # helper fed; 40 chunks ahead (or ``budget``, whichever is reached first) keep this process from
    # waiting on a busy helper when it could read on.
    helpers: int = field(default_factory=default_helpers)
    chunk: int = 50
    start_after: int = 50
    depth: int = 8
    ahead: int = 40  # chunks in flight at most (at least helpers * depth + 1)
    linger: float = 0.05  # seconds a chunk may wait for its items (a slow mailbox)
    weigh: Callable[[T], int] | None = None  # an item's weight (an email's size) ...
    budget: int = 32 * 1024 * 1024  # ... and the most weight in flight (a chunk alone may exceed it)
    _state: list[S] = field(default_factory=list, init=False, repr=False)  # made once, on the first item
    started: int = field(default=0, init=False)  # helpers that started (for tests and the benchmark)
    remote_chunks: int = field(default=0, init=False)  # chunks computed by helpers

    def map(self, items: Iterable[T], *, eager: bool = False) -> Iterator[tuple[T, R]]:
        """Yield ``(item, result)`` in the order of ``items``.

        ``eager``: much work is expected (a mailbox read for the first time),
        so the helpers start with the first item instead of after
        ``start_after`` items (and not at all when there is none).
        """
        it = iter(items)
        one = self._here
        for item in islice(it, 0 if eager else self.start_after):
            yield item, one([item])[0]
        try:
            first = next(it)
        except StopIteration:  # no helper, and no state, for nothing
            return
        it = chain([first], it)
        if self.helpers <= 0:
            for item in it:
                yield item, one([item])[0]
            return
        crew = _Crew()
        limit = max(self.ahead, self.helpers * self.depth + 1)
        # The state is made here, not in the starting thread: making it may read the log, whose
        # connection belongs to this thread.
        threading.Thread(target=self._start, args=(crew, self.state()), name="crm-readers", daemon=True).start()
        pending: deque[_Entry[T, R]] = deque()
        failed: Exception | None = None
        try:
            while True:
                chunk, failed = self._fill(it)
                if not chunk:
                    break
                yield from self._completed(pending)  # hand on what is in: it frees helpers
                entry: _Entry[T, R] = _Entry(chunk)
                free = [h for h in list(crew.helpers) if h.alive and h.busy < self.depth]
                if free and self._send(h := min(free, key=lambda x: x.busy), [self.prepare(x) for x in chunk]):
                    entry.helper = h
                else:  # the helpers are starting or all busy: this core takes the chunk
                    entry.results = one(chunk)
                entry.weight = sum(map(self.weigh, chunk)) if self.weigh is not None else 0
                pending.append(entry)
                yield from self._completed(pending)
                # Bounded: wait for the oldest rather than read further ahead.
                while len(pending) > limit or (len(pending) > 1 and sum(e.weight for e in pending) > self.budget):
                    yield from self._resolve(pending.popleft())
                if failed is not None:
                    break
            while pending:
                yield from self._resolve(pending.popleft())
        finally:
            crew.dismiss()
        if failed is not None:
            raise failed  # after handing on every item read before the input failed

    def _fill(self, it: Iterator[T]) -> tuple[list[T], Exception | None]:
        """The next chunk: ``chunk`` items, or fewer when the input is slow or fails.

        Why not ``islice``: a mailbox that trickles (or drops part-way) must
        not hold back what it already gave. A chunk goes as soon as it is
        ``linger`` seconds old; an error is returned with the items read
        before it, which are handed on before the error is raised.
        """
        chunk: list[T] = []
        start = time.monotonic()
        try:
            for item in it:
                chunk.append(item)
                if len(chunk) >= self.chunk or time.monotonic() - start >= self.linger:
                    break
        except Exception as e:  # noqa: BLE001 -- raised again by map() once the chunk is handed on
            return chunk, e
        return chunk, None

    def _completed(self, pending: deque[_Entry[T, R]]) -> Iterator[tuple[T, R]]:
        """The results at the head of the queue that are in (without waiting)."""
        while pending:
            head = pending[0]
            if head.results is None and not (head.helper is not None and self._has_result(head.helper)):
                return
            yield from self._resolve(pending.popleft())

    def _here(self, items: list[T]) -> list[R]:
        return self.fn(self.state(), [self.prepare(x) for x in items])

    def state(self) -> S:
        """The state, made on first use."""
        if not self._state:
            self._state.append(self.make_state())
        return self._state[0]

    # -- helpers' lifecycle -------------------------------------------------------------

    def _start(self, crew: _Crew, state: S) -> None:
        """Start the helper processes (in a background thread: an interpreter takes a moment to start)."""
        env = {"PATH": os.environ.get("PATH", ""),
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            for _ in range(self.helpers):
                p = subprocess.Popen([sys.executable, "-m", "crm_automation.parallel"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, close_fds=True)
                if p.stdin is None or p.stdout is None:  # never: both were asked for
                    raise OSError("no pipes to the helper")  # noqa: TRY301
                for pipe in (p.stdin, p.stdout):
                    _widen(pipe.fileno())
                h = _Helper(p, Connection(os.dup(p.stdin.fileno()), readable=False),
                            Connection(os.dup(p.stdout.fileno()), writable=False))
                p.stdin.close()
                p.stdout.close()
                h.send.send((self.fn.__module__, self.fn.__qualname__, state))
                if not crew.join(h):
                    return
                self.started += 1
        except (OSError, pickle.PicklingError) as e:  # no (more) helpers: the rest is computed here
            log.warning("could not start helper processes (%s: %s); reading mail on one core", type(e).__name__, e)

    # -- talking to one helper ----------------------------------------------------------

    def _send(self, h: _Helper, chunk: Sequence[object]) -> bool:
        try:
            h.send.send(chunk)
        except (OSError, ValueError) as e:
            self._lost(h, e)
            return False
        h.busy += 1
        return True

    def _has_result(self, h: _Helper) -> bool:
        try:
            return h.recv.poll()
        except (OSError, ValueError, EOFError):
            return True  # _resolve finds out and computes the chunk here

    def _resolve(self, entry: _Entry[T, R]) -> Iterator[tuple[T, R]]:
        results = entry.results
        h = entry.helper
        if results is None and h is not None and h.alive:
            try:
                ok, value = h.recv.recv()
            except (EOFError, OSError) as e:
                self._lost(h, e)
            else:
                h.busy -= 1
                if ok:
                    results = value
                    self.remote_chunks += 1
                else:
                    log.debug("a helper failed on a chunk (%s); computing it here", value)
        if results is None:
            results = self._here(entry.items)
        yield from zip(entry.items, results, strict=True)

    def _lost(self, h: _Helper, e: BaseException) -> None:
        if h.alive:
            log.warning("a helper process stopped (%s: %s); its work is done here", type(e).__name__, e)
        h.alive = False


if __name__ == "__main__":
    _helper_main()
