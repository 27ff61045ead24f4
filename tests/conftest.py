"""Shared fixtures. Server fixtures live in tests/fixtures/ and are loaded here.

tests/fixtures/core.py also wraps every test (an autouse fixture) so that it leaves loggers, signal handlers,
the environment and the working folder as it found them (issue #17): the suite runs in random order.
"""

pytest_plugins = [
    "tests.fixtures.core",
    "tests.fixtures.dovecot",
    "tests.fixtures.smtpd",
    "tests.fixtures.sheets_api",
    "tests.fixtures.postfix",
    "tests.fixtures.web",
    "tests.fixtures.browser",
    "tests.fixtures.postgres",
]
