"""Shared fixtures. Server fixtures live in tests/fixtures/ and are loaded here."""

pytest_plugins = [
    "tests.fixtures.core",
    "tests.fixtures.dovecot",
    "tests.fixtures.smtpd",
    "tests.fixtures.sheets_api",
    "tests.fixtures.postfix",
]
