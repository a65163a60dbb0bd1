"""The config's plaintext prefix (spec/format.md §3.1): edges that mutation testing
(tools/mutation.py, docs/reliability.md §8.3) found unpinned by the vectors."""

from __future__ import annotations

import pytest

from cas.errors import FormatError
from cas.format import config


@pytest.mark.parametrize("version", [0, 1, 2, 255])
def test_the_version_is_read_from_the_eight_byte_prefix_alone(version: int) -> None:
    """Bytes 0..7 are all a reader needs to learn the version (§3.1: it refuses another
    version before it asks for a password), even when nothing follows them."""
    assert config.read_version(config.header(version)) == version
    assert config.read_version(config.header(version) + b"\0" * 41) == version


@pytest.mark.parametrize(
    "raw", [b"", b"CASREPO", b"CASREP\x00\x01", b"casrepo\x01", b"XCASREPO\x01"]
)
def test_a_prefix_that_is_short_or_not_the_magic_is_refused(raw: bytes) -> None:
    with pytest.raises(FormatError, match="not a cas repository config"):
        config.read_version(raw)
