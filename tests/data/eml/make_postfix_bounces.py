"""Regenerate the Postfix part of the bounce corpus from a live, private Postfix (issue #11).

Writes, into tests/data/eml/bounce/:

- postfix_multi_recipient_unknown.eml  one message to c1, c2, c3@customer.example.com; c1 exists,
                                       c2 and c3 do not: one DSN naming both (failed, 5.1.1 each);
- postfix_delay_warning.eml            a message to a host that refuses connections, warned about
                                       after delay_warning_time (delayed, 4.4.1);
- postfix_expired_4_4_1.eml            the same message once maximal_queue_lifetime has passed
                                       (failed, 4.4.1: lost, but not a permanent address failure);
- postfix_rejected_5_7_1.eml           a remote smtpd refusing the recipient by policy at RCPT
                                       (failed, 5.7.1);
- postfix_smtputf8_global_dsn.eml     a message sent with SMTPUTF8 to 张三@customer.example.com, who
                                       does not exist: an RFC 6533 report (message/global-delivery-status,
                                       the message returned as message/global; failed, 5.1.1; issue #17);
- postfix_expected.json                file name -> {"recipients": {address: "hard"|"soft"|"delayed"}}
                                       as the DSNs say (hard = failed + 5.x.x, soft = failed + 4.x.x,
                                       delayed = Action: delayed).

The .eml files are the exact bytes the sender's Maildir received (nothing is
rewritten: the test instance already uses example names - mx.example.net,
client.example.com, customer.example.com - and loopback addresses; queue ids,
dates and the refused port number differ from run to run).

How to run (root, Debian/Ubuntu; takes ~15 s; nothing leaves loopback):

    DEBIAN_FRONTEND=noninteractive apt-get install -y postfix   # "No configuration" is fine
    systemctl stop postfix 2>/dev/null || true                   # the package's own instance is not used
    .venv/bin/python tests/data/eml/make_postfix_bounces.py      # or --dry-run to only print

The private instance (tests/fixtures/postfix.py: config, queue and Maildirs
in a temporary directory, smtpd on a free port of 127.0.0.1, error transport
for everything not on loopback) is started, used and stopped by this script.
Review the diff, then run ``pytest tests/integration/test_postfix_bounces.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tests.fixtures.postfix import (  # noqa: E402
    dump_expectations,
    expectations,
    parse,
    postfix_available,
    produce_corpus,
    recipient_fields,
    start_postfix,
)

BOUNCE = HERE / "bounce"
EXPECTED = BOUNCE / "postfix_expected.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--dry-run", action="store_true", help="print what Postfix wrote; write nothing")
    ap.add_argument("--out", type=Path, default=BOUNCE, help="directory for the .eml files and the json")
    args = ap.parse_args(argv)
    if not postfix_available():
        print("postfix is not installed: DEBIAN_FRONTEND=noninteractive apt-get install -y postfix", file=sys.stderr)
        return 2
    started = time.monotonic()
    pf = start_postfix()
    try:
        corpus = produce_corpus(pf)
    finally:
        pf.stop()
    for name, raw in sorted(corpus.items()):
        msg = parse(raw)
        fields = recipient_fields(msg)
        summary = ", ".join(f"{r} {f['action']} {f['status']}" for r, f in fields.items())
        print(f"{name}: {msg['Subject']!r} from {msg['From']}: {summary}")
        if not args.dry_run:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / name).write_bytes(raw)
    text = dump_expectations(expectations(corpus))
    if args.dry_run:
        print(text, end="")
    else:
        (args.out / EXPECTED.name).write_text(text, encoding="utf-8")
        print(f"wrote {len(corpus)} files and {EXPECTED.name} to {args.out}")
    print(f"took {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
