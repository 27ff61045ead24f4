"""GroupCommit (crm_automation/web/batching.py): items queued while a batch is written go together into the next."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from crm_automation.web.batching import GroupCommit


def test_a_batch_written_without_waiting_answers_before_the_next_batch_is_written():
    """serve writes a batch on the event loop without awaiting anything when the log is free; its requests must
    still get their answers before the next batch runs, not all at the end of the burst."""
    events: list[str] = []

    async def run(items: Sequence[int]) -> list[int]:
        events.append(f"write {list(items)}")
        return [i * 10 for i in items]

    async def main() -> None:
        commit: GroupCommit[int, int] = GroupCommit(run, max_batch=2)

        async def request(i: int) -> None:
            result = await commit.submit(i)
            events.append(f"answer {i}={result}")

        await asyncio.gather(*(request(i) for i in range(5)))

    asyncio.run(main())
    assert events == ["write [0, 1]", "answer 0=0", "answer 1=10", "write [2, 3]", "answer 2=20", "answer 3=30",
                      "write [4]", "answer 4=40"]


def test_an_error_goes_to_every_request_of_its_batch_and_the_next_batch_is_written():
    calls: list[list[int]] = []

    async def run(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            raise OSError("disk full")
        return list(items)

    async def main() -> list[object]:
        commit: GroupCommit[int, int] = GroupCommit(run, max_batch=2)
        return await asyncio.gather(*(commit.submit(i) for i in range(3)), return_exceptions=True)

    results = asyncio.run(main())
    assert [type(r).__name__ if isinstance(r, BaseException) else r for r in results] == ["OSError", "OSError", 2]
    assert calls == [[0, 1], [2]]


def test_a_batch_use_case_returning_the_wrong_count_is_a_bug_for_its_requests():
    async def run(items: Sequence[int]) -> list[int]:
        return [1]

    async def main() -> None:
        commit: GroupCommit[int, int] = GroupCommit(run, max_batch=5)
        await asyncio.gather(commit.submit(1), commit.submit(2))

    with pytest.raises(RuntimeError, match="2 items, 1 results"):
        asyncio.run(main())
