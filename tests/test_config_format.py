"""The config's plaintext prefix (spec/format.md §3.1): edges that mutation testing
(tools/mutation.py, docs/reliability.md §8.3) found unpinned by the vectors."""

from __future__ import annotations

import pytest

from cas import crypto
from cas.chunking.chunker import ChunkerParams
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


KEY = crypto.MasterKeys.generate().data_key


def _config(pack_size: int) -> bytes:
    cfg = config.Config(b"\x02" * 32, ChunkerParams(), pack_size)
    return config.encode_config(cfg, KEY)


@pytest.mark.parametrize("pack_size", [1 << 20, 16 << 20, 1 << 30])
def test_pack_sizes_from_one_mib_to_one_gib_are_accepted(pack_size: int) -> None:
    """§3.2: ``1 MiB <= pack_size <= 1 GiB``, both ends included."""
    assert config.decode_config(_config(pack_size), KEY).pack_size == pack_size


@pytest.mark.parametrize("pack_size", [0, (1 << 20) - 1, (1 << 30) + 1, 1 << 40])
def test_pack_sizes_outside_the_range_are_refused(pack_size: int) -> None:
    with pytest.raises(FormatError, match="pack_size out of range"):
        config.decode_config(_config(pack_size), KEY)
