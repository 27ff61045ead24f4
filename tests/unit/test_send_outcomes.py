"""When a send that one recipient's server keeps deferring gives up (issue #17 item 7): a pure rule of ``now``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crm_automation.send.dispatch import RECIPIENT_4XX_ATTEMPTS, gives_up, retry_at

NOW = datetime(2027, 1, 10, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(("attempts", "queued_ago", "give_up"), [
    (1, timedelta(minutes=1), False),
    (RECIPIENT_4XX_ATTEMPTS - 1, timedelta(hours=20), False),
    (RECIPIENT_4XX_ATTEMPTS, timedelta(hours=22), True),
    (2, timedelta(days=4), False),  # queued long ago (waiting for the window or a limit): still tried thrice
    (3, timedelta(days=4), True),  # a worker run rarely: three tries over more than three days
    (3, timedelta(days=2), False),
    (5, None, False),  # no queued_at (an old row): attempts alone decide
])
def test_gives_up_after_a_cap_on_attempts_or_age(attempts, queued_ago, give_up):
    queued_at = NOW - queued_ago if queued_ago is not None else None
    assert gives_up(attempts, queued_at, NOW) is give_up


def test_the_retry_delay_grows_and_is_capped():
    delays = [retry_at(NOW, n) - NOW for n in range(RECIPIENT_4XX_ATTEMPTS)]
    assert delays[0] == timedelta(minutes=5)
    assert delays == sorted(delays) and max(delays) == timedelta(hours=6)
