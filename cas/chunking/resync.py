"""Chunk resynchronisation with the parent file (spec/format.md §7.7).

Where a file changed, most of it usually did not: the chunks of the parent
snapshot's version come back.  The cut that ends a chunk depends only on that
chunk's bytes (both algorithms, §7.7), so when the next ``sizes[k]`` bytes at a
chunk start hash to the parent's chunk ``k``, the search would cut exactly
there, and the chunk is taken without it (unless ``k`` was the parent's last
chunk and more bytes follow: its end may have been the end of the stream).
The ID computed to compare is the chunk's ID, which is needed anyway, so an
unchanged region costs reading and hashing, not the cut search.

After a chunk that is the parent's chunk ``k`` (taken, or found by the
search and looked up), chunk ``k + 1`` is tried next; after a miss the search
runs from the same offset and each chunk it finds is looked up among the
parent's.  A chunk that ends where, with the offset shift of the last match,
a parent chunk starts (an overwrite keeps the offsets) tries that chunk.  A
miss costs one chunk's hash; nothing here can change a chunk boundary, so
the chunks and IDs are exactly those of the search alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from cas.chunking.chunker import Buffer, Guess

BlobIdOf = Callable[[bytes | memoryview], bytes]


class Chunker(Protocol):
    """A stream chunker that takes a guess (cas/chunking/chunker.py StreamChunker)."""

    def iter_chunks(
        self, read: Callable[[int], bytes], guess: Guess | None = None
    ) -> Iterator[bytes]: ...


class ParentChunks:
    """The parent file's chunks: blob IDs and plaintext lengths (a tree node's
    ``content`` and ``sizes``, spec §11.3), with lookups by ID and by offset."""

    __slots__ = ("content", "ids", "offsets", "sizes", "starts")

    def __init__(self, content: Sequence[bytes], sizes: Sequence[int]) -> None:
        if len(content) != len(sizes):
            raise ValueError("parent content and sizes differ in length")
        self.content = [bytes(b) for b in content]
        self.sizes = [int(n) for n in sizes]
        self.ids: dict[bytes, int] = {}
        self.offsets: list[int] = []
        self.starts: dict[int, int] = {}
        pos = 0
        for k, (blob_id, n) in enumerate(zip(self.content, self.sizes, strict=True)):
            self.ids.setdefault(blob_id, k)
            self.offsets.append(pos)
            self.starts.setdefault(pos, k)
            pos += n

    @staticmethod
    def wanted(content: Sequence[bytes]) -> bool:
        """Whether a parent file is worth sending along: with one chunk, only an
        unchanged file would match it, and the whole-file digest finds that."""
        return len(content) > 1

    @classmethod
    def from_wire(cls, value: Any) -> ParentChunks | None:
        """From ``[content, sizes]`` as sent to a helper process (None stays None)."""
        if value is None:
            return None
        content, sizes = value
        return cls(content, sizes)


class Resync:
    """Chunks one stream with ``chunker``, taking the parent's chunks where they fit;
    ``taken`` and ``searched`` count the chunks of each kind (for tests and profiles)."""

    def __init__(self, chunker: Chunker, blob_id: BlobIdOf, parent: ParentChunks | None) -> None:
        self.chunker = chunker
        self.blob_id = blob_id
        self.parent = parent
        self.taken = 0
        self.searched = 0
        self.missed = 0  # parent chunks hashed that did not match
        self._pos = 0  # stream offset of the next chunk
        # the parent chunk to try there first: chunk 0 at offset 0
        self._next: int | None = 0 if parent is not None and parent.sizes else None
        self._shift: int | None = None  # new offset - parent offset at the last match
        self._taken_id: bytes | None = None  # the ID of the chunk _guess took

    def chunks(self, read: Callable[[int], bytes]) -> Iterator[tuple[bytes, bytes]]:
        """(chunk, blob ID) of each chunk of the stream ``read(n)`` returns: the
        chunks ``chunker.iter_chunks(read)`` gives, whatever the parent holds."""
        parent = self.parent
        # Without a parent, the chunker is called as it always was.
        stream = (
            self.chunker.iter_chunks(read)
            if parent is None
            else self.chunker.iter_chunks(read, self._guess)
        )
        for chunk in stream:
            blob_id = self._taken_id
            if blob_id is not None:
                self._taken_id = None
                self.taken += 1
            else:
                blob_id = self.blob_id(chunk)
                self.searched += 1
                if parent is not None:
                    self._matched(parent, parent.ids.get(blob_id))
            self._pos += len(chunk)
            yield chunk, blob_id

    def _matched(self, parent: ParentChunks, k: int | None) -> None:
        """The chunk at ``_pos`` is the parent's chunk ``k`` (None: none of them)."""
        if k is None:
            self._next = None
            return
        self._shift = self._pos - parent.offsets[k]
        self._next = k + 1 if k + 1 < len(parent.sizes) else None

    def _guess(self, buf: Buffer, start: int, left: int, eof: bool) -> int:
        parent = self.parent
        assert parent is not None
        k = self._next
        if k is None and self._shift is not None:
            k = parent.starts.get(self._pos - self._shift)
        if k is None:
            return 0
        n = parent.sizes[k]
        last = k == len(parent.sizes) - 1
        # The chunker reads only what it needs: ask for the chunk's bytes (and, for
        # the last one, one more, to see whether the stream ends after it).
        need = n + 1 if last else n
        if n > 0 and need > left and not eof:
            return -need
        # The parent's last chunk may have ended at its stream's end, not at a cut:
        # it is this stream's chunk only if exactly as many bytes remain.
        if n == 0 or n > left or (last and not (eof and left == n)):
            self._next = None
            return 0
        with memoryview(buf) as view, view[start : start + n] as part:
            blob_id = self.blob_id(part)
        if blob_id != parent.content[k]:
            self._next = None
            self.missed += 1
            return 0
        self._taken_id = blob_id
        self._matched(parent, k)
        return n


def chunk_ids(
    chunker: Chunker,
    blob_id: BlobIdOf,
    read: Callable[[int], bytes],
    parent: ParentChunks | None = None,
) -> Iterator[tuple[bytes, bytes]]:
    """(chunk, blob ID) of each chunk of ``read``'s stream, resynchronised with
    ``parent`` when given."""
    return Resync(chunker, blob_id, parent).chunks(read)
