"""Error classes of cas: each carries its one-line message and its exit code.

The library raises these and nothing else reaches the user: the CLI prints
``str(error)`` on one line and exits with ``error.exit_code``.  The class
docstring is the message template, formatted with the constructor's
keyword arguments (borg's pattern), so messages live beside their codes.
"""

from __future__ import annotations

from typing import Any, ClassVar

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_WARNINGS = 3
EXIT_NO_REPOSITORY = 10
EXIT_LOCKED = 11
EXIT_WRONG_PASSWORD = 12
EXIT_UNTRUSTED = 13
EXIT_WRITE_ONLY = 14


class CasError(Exception):
    """{detail}"""

    exit_code: ClassVar[int] = EXIT_ERROR

    def __init__(self, detail: str = "", **fields: Any) -> None:
        self.fields = dict(fields, detail=detail)
        template = (type(self).__doc__ or "{detail}").strip().splitlines()[0]
        try:
            message = template.format(**self.fields)
        except (KeyError, IndexError):
            message = detail or template
        super().__init__(message)


class UsageError(CasError):
    """{detail}"""

    exit_code = EXIT_USAGE


class RepositoryNotFound(CasError):
    """no repository at {location}"""

    exit_code = EXIT_NO_REPOSITORY


class RepositoryExists(CasError):
    """a repository already exists at {location}"""


class WrongPassword(CasError):
    """wrong password: no key file of this repository opens with it"""

    exit_code = EXIT_WRONG_PASSWORD


class NoPassword(CasError):
    """{detail}"""

    exit_code = EXIT_USAGE


class EmptyPassword(CasError):
    """an empty password is not a password: {detail}"""

    exit_code = EXIT_USAGE


class LockedError(CasError):
    """repository is locked: {detail}"""

    exit_code = EXIT_LOCKED


class UnsupportedVersion(CasError):
    """{what} has format version {version}; this cas (format {supported}) cannot read it, upgrade cas"""  # noqa: E501


class UnsupportedKeyType(UnsupportedVersion):
    """key file has type {key_type}, which this cas cannot use (it knows {known}); upgrade cas"""


class IntegrityError(CasError):
    """integrity error in {what}: {detail}"""


class FormatError(IntegrityError):
    """malformed {what}: {detail}"""


class BackendError(CasError):
    """storage error: {detail}"""


class TransientBackendError(BackendError):
    """storage error: {detail}

    A failure that may go away if the same request is sent again: a 5xx reply,
    throttling (503 SlowDown), a timeout, a reset connection, a body that ended
    early.  The retrying backend (cas.backend.retry) retries exactly these;
    every other BackendError is permanent.
    """


class AccessDenied(BackendError):
    """storage error: {detail}

    The store refused the request for lack of permission (S3 403 AccessDenied,
    a local EACCES or EPERM): another attempt with the same credentials gets
    the same answer.  Backup, check, restore, copy and mount meet it on
    purpose with credentials that may not delete (docs/deploy.md): a lock file
    they cannot remove is left to go stale instead of failing the command.
    """


class DeleteRefused(CasError):
    """{command} must delete objects and the storage refuses deletes to these credentials ({detail}): run it with credentials that may delete, e.g. from a trusted host (docs/deploy.md)"""  # noqa: E501


class ObjectNotFound(BackendError):
    """object not found: {name}"""


class ObjectExists(BackendError):
    """object already exists: {name}"""


class BlobNotFound(IntegrityError):
    """blob {blob} is not in the index"""


class SnapshotNotFound(CasError):
    """no snapshot matches {detail}"""


class UntrustedChange(CasError):
    """{detail}; 'cas trust' lists what changed, 'cas trust --accept' accepts a legitimate change"""

    exit_code = EXIT_UNTRUSTED
