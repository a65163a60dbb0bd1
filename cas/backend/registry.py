"""Backends by URL scheme: each backend registers a factory with its own options type.

A location as the user types it (``s3://bucket/prefix``, ``/srv/repo``,
``file:///srv/repo``, ``memory://name``) names a scheme; the factory
registered for that scheme turns the rest of the location and its options
into a backend wrapped in the decorators that backend wants (retries,
request accounting).  Options travel as typed objects, one dataclass per
backend: a caller passes every options object it has and each factory takes
the one of its own type (or its defaults).  Adding a backend (SFTP, Azure...)
is one module with a factory and one line in :mod:`cas.backend`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cas.backend.base import Backend
from cas.errors import UsageError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class BackendFactory:
    """How one kind of backend is opened.

    ``schemes``: the URL schemes it serves ("" is a plain path).
    ``options_type``: its options dataclass, constructible without arguments
    (the defaults).  ``open(location, rest, options)`` gets the location as
    typed, the part after ``scheme://`` and an ``options_type`` instance, and
    returns the backend ready for use; it raises UsageError for a location or
    option it cannot accept.  ``example`` shows the form of a location.
    ``shared``: another process that opens the same location with the same
    options sees the same objects (false for the in-memory backend).
    """

    schemes: tuple[str, ...]
    options_type: type[Any]
    open: Callable[[str, str, Any], Backend]
    example: str
    shared: bool = True


_FACTORIES: dict[str, BackendFactory] = {}


def register(factory: BackendFactory) -> None:
    """Make ``factory`` serve its schemes (a later registration of a scheme wins)."""
    for scheme in factory.schemes:
        _FACTORIES[scheme] = factory


def split_location(location: str) -> tuple[str, str]:
    """(lower-case scheme, rest): ``("s3", "bucket/prefix")``; ``("", path)`` for a plain path."""
    match = _SCHEME.match(location)
    if match is None:
        return "", location
    return match.group(1).lower(), location[match.end() :]


def shared_location(location: str) -> bool:
    """Whether another process can open ``location`` and see the same objects."""
    factory = _FACTORIES.get(split_location(location)[0])
    return factory is not None and factory.shared


def open_backend(location: str, options: Iterable[object] = ()) -> Backend:
    """The backend for ``location``, opened by the factory of its scheme.

    ``options``: options objects of any backends; the factory takes the one
    of its ``options_type`` (else that type's defaults).  Raises UsageError
    for a scheme nobody registered: a typo such as "sftp://host/x" must not
    quietly become a local directory named "sftp:".
    """
    scheme, rest = split_location(location)
    factory = _FACTORIES.get(scheme)
    if factory is None:
        forms = list(dict.fromkeys(f.example for f in _FACTORIES.values()))
        listed = ", ".join(forms[:-1]) + " or " + forms[-1] if len(forms) > 1 else forms[0]
        raise UsageError(f"unsupported location {location!r}: use {listed}")
    chosen = next((o for o in options if isinstance(o, factory.options_type)), None)
    return factory.open(location, rest, chosen if chosen is not None else factory.options_type())
