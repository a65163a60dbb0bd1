"""Shared fixtures; the reusable kit lives in tests/support/ and is loaded as plugins."""

pytest_plugins = [
    "tests.support.s3server",
    "tests.support.backends",
]
