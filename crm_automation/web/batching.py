"""Group commit for ``serve``'s one-click unsubscribes (issue #19, "Performance").

Why: mail providers POST one-click unsubscribes in bursts (a campaign's
recipients click within minutes of delivery; Gmail's scanners retry), and
each POST is one write to the log. Written one at a time, every write pays
its own ``BEGIN IMMEDIATE`` (a wait for the worker's write lock) and its own
commit, and a burst of 200 waits 200 × that in the queue: that was most of
the ~230–840 ms p99 measured before (benchmarks/bench_unsubscribe.py).

So the POSTs that arrive while a write is under way wait in a queue, and
the next write takes all of them at once — at most :data:`MAX_BATCH` —
as one call of a batch use case
(:func:`crm_automation.app.suppressions.unsubscribe_by_tokens`: one
transaction, one result per item). Each request still gets its own answer,
and only after the transaction holding it has committed (the same promise as
before: a 200 means it is in the log). A request alone meets an idle queue
and is written at once, so nothing waits for company.

The batches run through :func:`crm_automation.web.app.write`, so they queue
with the app's other writes (requeue, suppress, clicks), one at a time.
An error of the batch call (the log busy past the busy timeout, a full disk)
is raised to every request of that batch; the next batch tries again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")

# At most this many items in one transaction: a batch of 100 one-click unsubscribes is a few milliseconds of
# writing, far below what the worker's send loop notices (a send's commit waits for it), and a burst larger than
# this is split so the first answers go out early.
MAX_BATCH = 100


class GroupCommit(Generic[_T, _R]):
    """Items submitted one by one, written in batches by ``run`` (one call per batch), answered one by one.

    ``run`` gets the items of one batch in the order they were submitted and
    returns one result per item, in that order (it runs the write, e.g. in the
    threadpool). Items submitted while a batch is being written wait for the
    next one. Belongs to one event loop (the server's).
    """

    def __init__(self, run: Callable[[Sequence[_T]], Awaitable[Sequence[_R]]], max_batch: int = MAX_BATCH) -> None:
        self._run = run
        self._max = max_batch
        self._pending: list[tuple[_T, asyncio.Future[_R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: _T) -> _R:
        """Queue one item and wait until the batch that holds it is written; its result (or the batch's error)."""
        future: asyncio.Future[_R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        # A client that hangs up cancels its own future only; the batch goes on for the others.
        return await future

    async def _drain(self) -> None:
        """Write batches until the queue is empty (one task at a time; started by the first item to arrive)."""
        while self._pending:
            # Give the loop one turn before each batch: the previous batch's requests send their answers (a batch
            # written without waiting for the log never gives the loop control, so they would wait for this one),
            # and requests that arrived together join this batch.
            await asyncio.sleep(0)
            batch, self._pending = self._pending[:self._max], self._pending[self._max:]
            try:
                results = await self._run([item for item, _ in batch])
            except Exception as e:  # noqa: BLE001 - handed to every waiting request, which answers for it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            if len(results) != len(batch):  # a broken batch use case: every waiter gets a bug, not a wrong answer
                error = RuntimeError(f"group commit: {len(batch)} items, {len(results)} results")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
