"""Roles in the mapping (issue #18 item 5): which fields are the customer's address, name, owner and stage.

Defaults are today's field names, so a workspace without ``[roles]`` works as
before; a workspace whose sheet says ``manager`` and ``phase`` declares them.
"""

from __future__ import annotations

import email as email_mod
from pathlib import Path

import pytest

from crm_automation.errors import ConfigError
from crm_automation.mapping import Roles, load_mapping
from tests.fixtures.core import CSV_MAPPING, db_rows, make_workspace

REPLY = (b"From: Customer 0 <C0@Example.com>\r\nTo: sales@example.com\r\nSubject: Re: hello\r\n"
         b"Message-ID: <r-1@example.com>\r\nDate: Fri, 27 Nov 2026 09:00:00 +0800\r\n\r\nYes please.\r\n")

# The sheet calls the salesperson "manager" and the pipeline "phase"; "owner" here is the customer
# company's owner (a person's name), which must not be mistaken for whom to notify.
RENAMED = """key = "email"
[fields]
email   = { column = "Email", type = "email", required = true }
contact = { column = "Contact", required = true }
phase   = { column = "Phase", type = "choice", choices = ["lead", "won"] }
manager = { column = "Manager", type = "email" }
owner   = { column = "Company owner" }
[roles]
name  = "contact"
owner = "manager"
stage = "phase"
"""
RENAMED_ROWS = [{"Email": f"c{i}@example.com", "Contact": f"Contact {i}", "Phase": "lead",
                 "Manager": "manager@example.com", "Company owner": "Mr Big"} for i in range(2)]


def _mapping(tmp_path: Path, text: str):
    (tmp_path / "customers.toml").write_text(text, encoding="utf-8")
    return load_mapping(tmp_path)


def test_without_roles_the_fields_of_those_names_play_them(tmp_path):
    m = _mapping(tmp_path, CSV_MAPPING)
    assert m.roles == Roles(email="email", name="name", owner="owner", stage="stage")
    assert m.role("owner") == "owner" and m.role("stage") == "stage"


def test_a_default_role_without_its_field_is_played_by_none(tmp_path):
    m = _mapping(tmp_path, 'key = "id"\n[fields]\nid = { column = "ID" }\n'
                           'work = { column = "Work mail", type = "email" }\n'
                           'boss = { column = "Boss", type = "email" }\n')
    # the key is not an address: the first email field is the customer's, as before roles existed
    assert m.roles == Roles(email="work", name=None, owner=None, stage=None)


def test_the_default_email_role_is_never_the_owner(tmp_path):
    m = _mapping(tmp_path, 'key = "id"\n[fields]\nid = { column = "ID" }\n'
                           'owner = { column = "Owner", type = "email" }\nmail = { column = "Mail", type = "email" }\n')
    assert (m.roles.email, m.roles.owner) == ("mail", "owner")


def test_an_empty_role_says_no_field_plays_it(tmp_path):
    m = _mapping(tmp_path, CSV_MAPPING + '[roles]\nowner = ""\n')
    assert m.roles.owner is None and m.roles.name == "name"


@pytest.mark.parametrize(("roles", "expected"), [
    ('owner = "manager"', r'customers\.toml: roles\.owner = \'manager\' is not one of the fields \(expected a '
                          r'field name from \[fields\]: email, name, stage, owner'),
    ('email = "name"', r'roles\.email = \'name\' is a field of type "text" \(expected a field of type "email"'),
    ('owner = "stage"', r'roles\.owner = \'stage\' is a field of type "text" \(expected a field of type "email"'),
    ('owner = "email"', r"roles\.email and roles\.owner both name field 'email'"),
    ('boss = "owner"', r"customers\.toml: roles\.boss"),
])
def test_a_bad_role_is_a_config_error_naming_file_key_value_and_what_was_expected(tmp_path, roles, expected):
    with pytest.raises(ConfigError, match=expected):
        _mapping(tmp_path, CSV_MAPPING + f"[roles]\n{roles}\n")


def test_a_bad_role_stops_check_with_exit_2_and_no_traceback(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", mapping=CSV_MAPPING + '[roles]\nowner = "manager"\n')
    r = cli("check", "--config", str(cfg))
    assert r.code == 2
    assert "customers.toml: roles.owner = 'manager' is not one of the fields" in r.out
    assert "Traceback" not in r.out + r.err


def test_renamed_owner_name_and_stage_are_used_end_to_end(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", rows=RENAMED_ROWS, mapping=RENAMED, extra_config="notify_owner = true\n",
                         campaigns='[[campaign]]\nid = "hi"\ntemplate = "hello"\ntrigger = "new"\n'
                                   'include_existing = true\nwhere = { phase = "lead" }\n',
                         templates={"hello.txt": "Subject: Hello {{ customer.contact }}\n\nHi\n"})
    (tmp_path / "ws" / "inbox" / "new" / "1.a").write_bytes(REPLY)
    r = cli("run", "--once", "--config", str(cfg))
    assert r.code == 0, r.err
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    assert db_rows(db, "SELECT customer_key, kind FROM activities WHERE kind = 'email_in'") == [
        ("c0@example.com", "email_in")]
    msgs = [email_mod.message_from_bytes(p.read_bytes()) for p in (tmp_path / "ws" / "var" / "outbox").glob("*.eml")]
    notes = [m for m in msgs if m["To"] == "manager@example.com"]
    assert len(notes) == 1  # the owner role's address, not the "owner" field (a name, not an address)
    assert notes[0]["Reply-To"] == "c0@example.com"
    assert "Contact 0" in notes[0].get_payload(decode=True).decode()  # the name role names the customer
    campaign = sorted(str(m["To"]) for m in msgs if m["To"] != "manager@example.com")
    assert campaign == ["Contact 0 <c0@example.com>", "Contact 1 <c1@example.com>"]  # the name role in To:
    assert db_rows(db, "SELECT campaign, status, email FROM sends WHERE campaign = 'owner-notify'") == [
        ("owner-notify", "sent", "manager@example.com")]


def test_the_owner_role_address_is_not_taken_for_a_customer(tmp_path, cli):
    """Mail from the manager is not matched to a customer by the manager column (it is the owner role's)."""
    cfg = make_workspace(tmp_path / "ws", rows=RENAMED_ROWS, mapping=RENAMED)
    (tmp_path / "ws" / "inbox" / "new" / "1.a").write_bytes(
        b"From: manager@example.com\r\nTo: sales@example.com\r\nSubject: note\r\n"
        b"Message-ID: <m-1@example.com>\r\n\r\nfyi\r\n")
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    assert db_rows(db, "SELECT customer_key FROM activities WHERE message_id = '<m-1@example.com>'") == [(None,)]


def test_a_workspace_reads_its_stage_role(tmp_path):
    from crm_automation.workspace import Workspace

    cfg = make_workspace(tmp_path / "ws", rows=RENAMED_ROWS, mapping=RENAMED)
    ws = Workspace.load(cfg)
    assert (ws.mapping.role("stage"), ws.mapping.role("owner"), ws.email_field) == ("phase", "manager", "email")
