"""Maildir poll benchmark (issue #9): the name-set cursor costs no more than the old file-time cursor.

    python benchmarks/bench_maildir_poll.py                  # 10,000 messages, 20 polls each
    python benchmarks/bench_maildir_poll.py --messages 100000

Issue #9 replaced the Maildir cursor (the newest file time logged, which lost
messages with older times) by the set of file names already logged, and asks
for "the same speed for a folder with nothing new". Measured side by side in
one run, on the same Maildir, after everything was logged:

* **file-time scan** (the old cursor's own work, the yardstick): one
  ``os.scandir`` of ``new/`` and ``cur/`` with a ``stat`` of every entry,
  comparing its time with a cursor (what the old source did on each poll);
* **our poll**: the worker's fetch stage with nothing new (what ``run`` does
  every ``fetch_every``), which loads the logged names from the log, scans
  the directories and reads no file; in process, so Python start-up is not
  counted (it is the same for both).

Rounds are interleaved (this machine's speed swings from minute to minute);
the ratio of each round compares like with like. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crm_automation.worker import Worker  # noqa: E402
from crm_automation.workspace import Workspace  # noqa: E402
from tests.fixtures.core import make_workspace  # noqa: E402


def filetime_scan(folder: Path, since: int) -> int:
    """What the old source did on a poll with nothing new: scan and stat every entry."""
    n = 0
    for sub in ("new", "cur"):
        with os.scandir(folder / sub) as it:
            for e in it:
                if e.name.startswith(".") or not e.is_file():
                    continue
                if e.stat().st_mtime_ns >= since:
                    n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--polls", type=int, default=20)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="crm-bench-maildir-"))
    cfg = make_workspace(root / "ws")
    inbox = root / "ws" / "inbox"
    for i in range(args.messages):
        sub = "cur" if i % 2 else "new"
        name = f"{1_700_000_000 + i}.M{i}P1.host" + (":2,S" if sub == "cur" else "")
        (inbox / sub / name).write_bytes(
            f"From: s{i}@example.net\r\nTo: sales@example.com\r\nSubject: m {i}\r\nMessage-ID: <m{i}@example.net>\r\n"
            f"\r\nHello {i}\r\n".encode())
    w = Worker(Workspace.load(cfg))
    t0 = time.perf_counter()
    first = w.fetch()
    t_first = time.perf_counter() - t0
    assert first.stats["messages"] == args.messages, first.stats
    newest = max(e.stat().st_mtime_ns for sub in ("new", "cur") for e in os.scandir(inbox / sub))
    ours, peer, ratios = [], [], []
    for _ in range(args.polls):
        t0 = time.perf_counter()
        assert filetime_scan(inbox, newest + 1) == 0
        a = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = w.fetch()
        b = time.perf_counter() - t0
        assert r.stats["messages"] == 0
        assert r.error is None
        peer.append(a)
        ours.append(b)
        ratios.append(b / a)
    w.close()
    print(f"{args.messages} messages in a Maildir (half in new/, half in cur/ with flags); first fetch "
          f"{t_first:.2f} s")
    print(f"poll with nothing new, {args.polls} interleaved rounds:")
    print(f"  file-time scan (old cursor's work): median {statistics.median(peer) * 1000:.1f} ms, "
          f"best {min(peer) * 1000:.1f} ms")
    print(f"  our fetch stage (name-set cursor):  median {statistics.median(ours) * 1000:.1f} ms, "
          f"best {min(ours) * 1000:.1f} ms")
    print(f"  ratio ours / file-time scan: median {statistics.median(ratios):.2f}x, "
          f"worst {max(ratios):.2f}x")


if __name__ == "__main__":
    main()
