"""Several SMTP accounts (issue #20, part 3): their config, and the pure rule that names each send's account."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from crm_automation.config import load_config
from crm_automation.errors import ConfigError
from crm_automation.inbound import InboundPolicy
from crm_automation.send.accounts import UNLIMITED_WEIGHT, Router, accounts_of, choose, routing_key
from crm_automation.send.dispatch import rate_block
from crm_automation.store.claims import Rate
from crm_automation.store.repo import Store
from crm_automation.store.sends import Claim, SendKind, SendRow, SendStatus
from crm_automation.workspace import Workspace
from tests.fixtures.core import make_workspace
from tests.unit.test_claims import T0, A, queue, worker

QQ = '''
[[outbound.accounts]]
name = "qq"
host = "smtp.qq.com"
port = 465
username = "sales@qq.com"
password_env = "CRM_QQ_PASSWORD"
from = "销售部 <sales@qq.com>"
max_per_day = 100

[[outbound.accounts]]
name = "exmail.2"
host = "smtp.exmail.qq.com"
username = "sales@example.com"
password_env = "CRM_EXMAIL_PASSWORD"
'''
SMTP = 'transport = "smtp"\nhost = "smtp.example.com"\nusername = "sales@example.com"\npassword_env = "CRM_SMTP_PW"'


def config(tmp_path: Path, extra: str, outbound: str = SMTP, campaigns: str = "") -> Path:
    return make_workspace(tmp_path / "ws", outbound=outbound, extra_config=extra, campaigns=campaigns)


def problems(cfg: Path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    return e.value.problems


# ----------------------------------------------------------------------------- config


def test_accounts_are_read_with_their_defaults(tmp_path):
    cfg = load_config(config(tmp_path, QQ))
    ob = cfg.outbound
    assert ob.account_names == ("default", "qq", "exmail.2")
    default, qq, ex = accounts_of(ob)
    assert (default.name, default.label, default.sender.from_) == (None, "default", "Sales <sales@example.com>")
    assert (qq.name, qq.sender.from_, qq.sender.addr, qq.per_minute, qq.per_day) == (
        "qq", "销售部 <sales@qq.com>", "sales@qq.com", 30, 100)
    # from and reply_to default to [outbound]'s; the limits to outbound's defaults (30 / 1500), not outbound's values
    assert (ex.sender.from_, ex.sender.reply_to, ex.per_minute, ex.per_day) == ("Sales <sales@example.com>", None,
                                                                                30, 1500)
    assert ex.server.host == "smtp.exmail.qq.com"


def test_without_outbound_host_only_the_listed_accounts_send(tmp_path):
    cfg = load_config(config(tmp_path, QQ, outbound='transport = "smtp"'))
    assert cfg.outbound.account_names == ("qq", "exmail.2")
    assert [a.label for a in accounts_of(cfg.outbound)] == ["qq", "exmail.2"]


@pytest.mark.parametrize(("extra", "expected"), [
    (QQ + '\n[[outbound.accounts]]\nname = "QQ"\nhost = "h.example.com"\n',
     "outbound.accounts[2] name 'QQ' is already the name of outbound.accounts[0] (expected a unique name"),
    ('[[outbound.accounts]]\nname = "qq mail"\nhost = "h.example.com"\n',
     "outbound.accounts[0].name 'qq mail' is not an account name (expected letters, digits"),
    ('[[outbound.accounts]]\nname = "Default"\nhost = "h.example.com"\n',
     "outbound.accounts[0].name 'Default' is reserved: reports call [outbound]'s own server \"default\""),
    ('[[outbound.accounts]]\nname = "qq"\nusername = "a@qq.com"\npassword_env = "QQ_PW"\n',
     "outbound.accounts[qq].host is required for a server connection"),
    ('[[outbound.accounts]]\nname = "qq"\nhost = "smtp.qq.com"\nusername = "a@qq.com"\npassword = "hunter2hunter2"\n',
     "outbound.accounts[0].password is not a known key: secrets never go in the config file"),
    ('[[outbound.accounts]]\nname = "qq"\nhost = "smtp.qq.com"\nusername = "a@qq.com"\n',
     "outbound.accounts[qq].password_env is required with username"),
    ('[[outbound.accounts]]\nname = "qq"\nhost = "smtp.qq.com"\nfrom = "sales at qq"\n',
     "outbound.accounts[qq].from is 'sales at qq' (expected an address like"),
    ('[[outbound.accounts]]\nname = "qq"\nhost = "smtp.qq.com"\nsecurity = "none"\n',
     "outbound.accounts[qq].security = \"none\" sends the password in clear text to 'smtp.qq.com'"),
    ('[[outbound.accounts]]\nname = "qq"\nhost = "smtp.qq.com"\nmax_per_day = -1\n',
     "outbound.accounts[0].max_per_day is -1 (expected a number at least 0)"),
])
def test_each_bad_account_is_refused_naming_the_file_key_and_what_was_expected(tmp_path, extra, expected):
    cfg = config(tmp_path, extra)
    found = problems(cfg)
    assert any(p.startswith(f"{cfg}: ") and expected in p for p in found), found
    assert not any("hunter2" in p for p in found)  # a secret typed into the file is never repeated


def test_accounts_need_the_smtp_transport(tmp_path):
    cfg = config(tmp_path, QQ, outbound='transport = "outbox"\noutbox = "var/outbox"')
    assert problems(cfg) == [f"{cfg}: outbound.accounts are SMTP accounts, but outbound.transport is 'outbox' "
                             "(expected transport = \"smtp\", or remove the [[outbound.accounts]] entries)"]


def test_a_campaign_pinning_an_unknown_account_is_refused_with_the_names_that_exist(tmp_path):
    camp = '[[campaign]]\nid = "welcome"\ntemplate = "hello"\ntrigger = "new"\naccount = "163"\n'
    cfg = config(tmp_path, QQ, campaigns=camp)
    with pytest.raises(ConfigError) as e:
        Workspace.load(cfg)
    campaigns = cfg.parent / "mappings" / "campaigns.toml"
    assert e.value.problems == [f"{campaigns}: campaign[0] (id 'welcome'): account = '163' is not an SMTP account of "
                                "config.toml (expected one of 'default', 'qq', 'exmail.2')"]


def test_a_campaign_may_pin_a_listed_account_or_the_default(tmp_path):
    camp = ('[[campaign]]\nid = "welcome"\ntemplate = "hello"\ntrigger = "new"\naccount = "qq"\n\n'
            '[[campaign]]\nid = "other"\ntemplate = "hello"\ntrigger = "new"\naccount = "default"\n')
    ws = Workspace.load(config(tmp_path, QQ, campaigns=camp))
    assert [(c.id, c.account) for c in ws.campaigns] == [("welcome", "qq"), ("other", "default")]


# ----------------------------------------------------------------------------- the rule


def accounts(tmp_path: Path, *weights: int) -> list:
    extra = "".join(f'\n[[outbound.accounts]]\nname = "a{i}"\nhost = "smtp{i}.example.com"\nmax_per_day = {w}\n'
                    for i, w in enumerate(weights))
    return list(accounts_of(load_config(config(tmp_path, extra, outbound='transport = "smtp"')).outbound))


def row(key: str, *, campaign: str = "welcome", kind: SendKind = SendKind.CAMPAIGN_STEP,
        email: str | None = None) -> SendRow:
    return SendRow(1, campaign, 0, key, SendStatus.QUEUED, None, None, None, None, email, 0, None, "s", kind)


def test_the_choice_is_weighted_by_max_per_day(tmp_path):
    a0, a1 = accounts(tmp_path, 100, 300)
    got = Counter(choose(f"customer-{i}@example.com", [a0, a1]).label for i in range(10_000))
    assert abs(got["a1"] / 10_000 - 0.75) < 0.02, got  # 1:3 within a few per cent


def test_an_unlimited_account_counts_as_a_large_weight(tmp_path):
    a0, a1 = accounts(tmp_path, 0, 1500)
    assert a0.weight == UNLIMITED_WEIGHT
    got = Counter(choose(f"c{i}", [a0, a1]).label for i in range(2000))
    assert got["a0"] > 1900


def test_removing_an_account_moves_only_its_customers_and_adding_one_takes_only_its_share(tmp_path):
    a0, a1, a2 = accounts(tmp_path, 500, 500, 500)
    keys = [f"c{i}" for i in range(3000)]
    before = {k: choose(k, [a0, a1, a2]).label for k in keys}
    after = {k: choose(k, [a0, a2]).label for k in keys}  # a1 removed
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == "a1"}
    assert 800 < len(moved) < 1200  # its third, given to the others
    grown = {k: choose(k, [a0, a2, a1]).label for k in keys}  # added back (in another place of the list)
    assert grown == before


def test_the_choice_is_the_same_in_every_process(tmp_path):
    """A stable hash, never Python's salted hash(): another worker (another PYTHONHASHSEED) names the same account."""
    a0, a1, a2 = accounts(tmp_path, 100, 200, 300)
    here = [choose(f"c{i}", [a0, a1, a2]).label for i in range(200)]
    code = ("import sys, json; from crm_automation.config import load_config; "
            "from crm_automation.send.accounts import accounts_of, choose; "
            "a = accounts_of(load_config(sys.argv[1]).outbound); "
            "print(json.dumps([choose(f'c{i}', a).label for i in range(200)]))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ws" / "config.toml")], check=True,
                             capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert out.strip() == str(here).replace("'", '"')


def test_a_pinned_campaign_wins_and_owner_mail_is_hashed_on_the_owner(tmp_path):
    a0, a1, a2 = accounts(tmp_path, 100, 100, 100)
    router = Router([a0, a1, a2], {"promo": "a2"})
    keys = [f"c{i}" for i in range(60)]
    assert {router.account_for(row(k, campaign="promo")).label for k in keys} == {"a2"}
    assert len({router.account_for(row(k)).label for k in keys}) == 3  # unpinned: spread by the rule
    assert all(router.account_for(row(k)) == choose(k, [a0, a1, a2]) for k in keys)
    # an owner's notifications and digests go through one account, whichever customer they are about
    notes = {router.account_for(row(k, campaign="owner-notify", kind=SendKind.OWNER_NOTIFICATION,
                                    email="Boss@Example.com")).label for k in keys}
    digest = router.account_for(row("boss@example.com", campaign="digest", kind=SendKind.OWNER_DIGEST))
    assert notes == {digest.label} == {choose("boss@example.com", [a0, a1, a2]).label}
    assert routing_key(row("k", kind=SendKind.OWNER_DIGEST, email=" Boss@Example.com ")) == "boss@example.com"


def test_the_accounts_addresses_are_our_own_never_new_customers(tmp_path):
    """``new_senders = "add_to_sheet"`` never adds an account's From or login (a bounce copy, a test mail)."""
    own = InboundPolicy.of(Workspace.load(config(tmp_path, QQ))).own_addresses
    assert own["sales@qq.com"] == "outbound.accounts[qq].from"
    assert own["sales@example.com"] == "outbound.from"


def test_a_send_handed_over_by_the_default_account_no_longer_names_another(log_location):
    """A 4xx retry (or a requeue) of a send an account tried, now sent by [outbound]'s own: counted there, not there.

    With accounts configured the hand-over clears an account an earlier attempt recorded (``Rate.others``); a
    workspace without accounts writes nothing more than it did.
    """
    store = Store.open(log_location)
    try:
        sid, other = queue(store, 2)
        worker(store, A)
        store.claim_sends(A, T0, 2)
        with store.transaction():  # an earlier attempt through account "qq", then a 4xx: queued again
            store.conn.execute("UPDATE sends SET account = 'qq' WHERE id IN (?, ?)", (sid, other))
        default = Rate(None, 0, 5, lambda m, d: rate_block(0, 5, m, d), others=True)
        assert store.mark_sent_and_sending(None, sid, "<m0@x>", T0, A, rate=default) is Claim.SENDING
        assert store.conn.execute("SELECT account FROM sends WHERE id = ?", (sid,)).fetchone()[0] is None
        assert store.recent_hand_overs(None, T0).day == 1 and store.recent_hand_overs("qq", T0).day == 0
        alone = Rate(None, 0, 5, lambda m, d: rate_block(0, 5, m, d))  # no accounts: the row is left as it is
        assert store.mark_sent_and_sending(None, other, "<m1@x>", T0, A, rate=alone) is Claim.SENDING
        assert store.conn.execute("SELECT account FROM sends WHERE id = ?", (other,)).fetchone()[0] == "qq"
    finally:
        store.close()
