"""Reading content-named objects: every whole object is checked against its name."""

from __future__ import annotations

from cas.backend.base import ReadBackend
from cas.errors import IntegrityError
from cas.ids import storage_id
from cas.repo import layout


def read_verified(backend: ReadBackend, name: str, what: str) -> bytes:
    """Read a whole content-named object and check that it hashes to its name."""
    raw = backend.read(name)
    expected = layout.id_from_name(name)
    if expected is None or storage_id(raw) != expected:
        raise IntegrityError(what=f"{what} {name}", detail="content does not match its name")
    return raw
