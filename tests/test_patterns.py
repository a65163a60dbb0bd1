"""Exclude/include patterns: restic's glob syntax over absolute byte paths."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from cas.errors import EXIT_USAGE
from cas.fs.patterns import PatternError, PatternSet, read_pattern_file


def matches(pattern: bytes, path: bytes, *, ignore_case: bool = False) -> bool:
    return PatternSet([pattern], ignore_case=ignore_case).matches(path)


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        # no slash: any single path element, anywhere
        (b"*.o", b"/src/main.o", True),
        (b"*.o", b"/src/main.c", False),
        (b"*.o", b"/build/x.o/inside", True),  # a matching directory covers its contents
        (b"node_modules", b"/app/node_modules/react/index.js", True),
        (b"node_modules", b"/app/node_modules2", False),
        (b"node_modules", b"/app/my_node_modules", False),
        (b"cache", b"/cache", True),
        # leading slash: anchored at the root
        (b"/tmp", b"/tmp", True),
        (b"/tmp", b"/tmp/x/y", True),
        (b"/tmp", b"/var/tmp", False),
        (b"/tmp", b"/tmpfile", False),
        (b"/home/*/.cache", b"/home/me/.cache/pip/x", True),
        (b"/home/*/.cache", b"/home/me/sub/.cache", False),
        # slash but not leading: at any directory boundary
        (b"foo/bar", b"/x/foo/bar", True),
        (b"foo/bar", b"/foo/bar/baz", True),
        (b"foo/bar", b"/xfoo/bar", False),
        # * and ? never cross a slash; ** does
        (b"/a/*", b"/a/b", True),
        (b"/a/*/c", b"/a/b/x/c", False),
        (b"/a/**/c", b"/a/b/x/c", True),
        (b"/a/**/c", b"/a/c", True),
        (b"/a/**", b"/a/b/c", True),
        (b"/a/?", b"/a/b", True),
        (b"/a/?", b"/a/bc", False),
        (b"/a?b", b"/a/b", False),
        # classes
        (b"/x[a-c]y", b"/xby", True),
        (b"/x[a-c]y", b"/xdy", False),
        (b"/x[!a-c]y", b"/xdy", True),
        (b"/x[^a-c]y", b"/xby", False),
        (b"/x[!a]y", b"/x/y", False),  # a class never matches the separator
        (b"/x[/]y", b"/x/y", False),
        (b"/[]a]", b"/]", True),  # "]" first in a class is a member
        (b"/[!]a]", b"/b", True),
        (b"/[!]a]", b"/]", False),
        (b"/[[]x", b"/[x", True),
        (b"/x[-a]y", b"/x-y", True),
        (b"/a[b", b"/a[b", True),  # an unterminated class is a literal "["
        # regex metacharacters are literal
        (b"/a.b", b"/axb", False),
        (b"/a+(b)", b"/a+(b)", True),
        (b"/a\\b", b"/a\\b", True),
        # trailing slash and the root
        (b"/tmp/", b"/tmp/x", True),
        (b"/", b"/anything/at/all", True),
        # bytes that are not UTF-8, newlines
        (b"caf\xe9", b"/x/caf\xe9/y", True),
        (b"/new*", b"/new\nline", True),
        (b"*line", b"/new\nline", True),
    ],
)
def test_match(pattern: bytes, path: bytes, expected: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "possible nested set" FutureWarning either
        assert matches(pattern, path) is expected


def test_ignore_case() -> None:
    assert matches(b"*.JPG", b"/photos/a.jpg", ignore_case=True)
    assert not matches(b"*.JPG", b"/photos/a.jpg")
    assert matches(b"/Photos/[A-C]*", b"/photos/beach.png", ignore_case=True)


def test_set_of_patterns_and_comments() -> None:
    ps = PatternSet([b"*.o", b"", b"# a comment", b"/tmp"])
    assert ps.patterns == [b"*.o", b"/tmp"]
    assert ps and ps.matches(b"/x/y.o") and ps.matches(b"/tmp/z")
    assert not ps.matches(b"/x/y.c")
    empty = PatternSet([])
    assert not empty and not empty.matches(b"/anything")
    assert not PatternSet([b"# only a comment"])


@pytest.mark.parametrize("bad", [b"[z-a]", b"/x/[9-0]*"])
def test_invalid_pattern_is_a_usage_error(bad: bytes) -> None:
    with pytest.raises(PatternError) as info:
        PatternSet([b"fine", bad])
    assert info.value.exit_code == EXIT_USAGE
    message = str(info.value)
    assert "invalid pattern" in message and bad.decode() in message and "\n" not in message


def test_read_pattern_file(tmp_path: Path) -> None:
    f = tmp_path / "excludes"
    f.write_bytes(b"# comment\n*.o\n\n  /tmp/cache  \ncaf\xe9\r\n")
    assert read_pattern_file(str(f)) == [b"*.o", b"/tmp/cache", b"caf\xe9"]
