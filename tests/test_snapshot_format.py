"""Snapshot documents (spec/format.md §12): edges that mutation testing
(tools/mutation.py, docs/reliability.md §8.3) found unpinned by the vectors."""

from __future__ import annotations

from typing import Any

import pytest

from cas import crypto
from cas.errors import FormatError
from cas.format import snapshot as snapfmt

KEY = crypto.MasterKeys.generate().data_key


def _sealed(paths: list[Any], tags: list[Any]) -> bytes:
    snap = snapfmt.Snapshot(1, b"\x01" * 32, paths, "host", "user", tags=tags)
    return snapfmt.encode_snapshot(snap, KEY)


def test_good_paths_and_tags_decode() -> None:
    snap = snapfmt.decode_snapshot(_sealed([b"/a", b"/\xff"], ["x", "y"]), KEY)
    assert (snap.paths, snap.tags) == ([b"/a", b"/\xff"], ["x", "y"])


@pytest.mark.parametrize(
    ("paths", "tags"),
    [
        ([b"/a"], [1]),  # paths right, a tag that is not text
        (["/a"], ["x"]),  # tags right, a path that is text instead of bytes
        (["/a"], [1]),  # both wrong
    ],
)
def test_one_malformed_path_or_tag_refuses_the_snapshot(paths: list[Any], tags: list[Any]) -> None:
    """§12: ``paths`` are byte strings and ``tags`` text; either list wrong alone is enough
    to refuse the document."""
    with pytest.raises(FormatError, match="malformed paths or tags"):
        snapfmt.decode_snapshot(_sealed(paths, tags), KEY)
