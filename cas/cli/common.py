"""What every command shares: global options, passwords, opening the repository, output."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from cas import crypto
from cas import repo as repo_pkg
from cas.backend import Backend, S3Options, request_summary
from cas.backend.retry import DEFAULT_ATTEMPTS
from cas.errors import (
    AccessDenied,
    CasError,
    DeleteRefused,
    EmptyPassword,
    LockedError,
    NoPassword,
    TransientBackendError,
    UsageError,
)
from cas.ipc import trim_heap, usable_cores
from cas.wording import counted

if TYPE_CHECKING:
    # Imported where used: a command derives its key (Argon2id, 32 MiB) on top of what
    # it has imported by then, and none of these is needed to unlock (tests/test_unlock_heap.py).
    from cas.repo import RepoOptions, Repository
    from cas.repo.generations import Finding
    from cas.repo.locks import RepoLock
    from cas.repo.readerspec import ReaderSpec


@dataclass(frozen=True)
class HelperPlan:
    """Helper processes for one command: what they need to read the repository, how
    many, whether it is local and unthrottled (no need for many reads in flight per
    process), and the connections to share out among them."""

    spec: ReaderSpec
    count: int
    local: bool
    connections: int

    def per_process(self, minimum: int) -> int:
        """Reads in flight per process: ``minimum`` when local, else a share."""
        return minimum if self.local else max(1, self.connections // self.count)


@dataclass
class Globals:
    """Options given before the command name."""

    repo: str | None
    password_file: str | None
    password_command: str | None
    json: bool
    quiet: bool
    s3_endpoint: str | None
    s3_path_style: bool
    no_lock: bool
    lock_wait: float
    no_cache: bool = False
    cache_dir: str | None = None
    s3_storage_class: str | None = None
    connections: int | None = None
    verbose: int = 0
    output: Output | None = None  # the command's, once it made one: where retries are told
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    backends: list[Backend] = field(default_factory=list)
    repos: list[Repository] = field(default_factory=list)
    degraded: bool = False  # a damaged object was skipped: exit 3 once done
    helper_requests: list[dict[str, Any]] = field(default_factory=list)  # their own backends
    # Objects the storage refused to delete (credentials without delete permission):
    # ``not_deleted`` in the summary, and a warning (exit code unchanged).
    not_deleted: list[dict[str, Any]] = field(default_factory=list)
    # Repositories a reading command opened: what contradicts this client's state
    # (spec §13.6) is warned about at the end, with exit 13, instead of stopping it.
    reading: list[Repository] = field(default_factory=list)
    untrusted: bool = False
    _warned: set[bytes] = field(default_factory=set)
    _told_findings: set[Finding] = field(default_factory=set)
    _told_not_deleted: int = 0

    def warn_damaged(self, out: Output) -> None:
        """Warn once about each snapshot a listing had to skip, and mark the run degraded."""
        for repo in self.repos:
            for kind, found, fix in (
                ("snapshot", repo.damaged_snapshots, "'cas forget {short}' removes it"),
                ("key file", repo.damaged_keys, "'cas key remove {short}' removes it"),
            ):
                for oid, why in sorted(found.items()):
                    if oid in self._warned:
                        continue
                    self._warned.add(oid)
                    self.degraded = True
                    short = oid.hex()[:8]
                    out.warn(
                        f"{kind} {short} skipped, it cannot be read ({why}); "
                        + fix.format(short=short)
                    )

    def warn_untrusted(self, out: Output) -> None:
        """Warn once about each finding a reading command met (it read on: nothing it
        reads can be forged, only hidden or old), and mark the run for exit 13."""
        for repo in self.reading:
            for finding in repo.generations.findings:
                if finding not in self._told_findings:
                    self._told_findings.add(finding)
                    self.untrusted = True
                    out.warn(f"{finding.message} (read anyway; see 'cas trust')")

    def warn_not_deleted(self, out: Output) -> None:
        """Warn once about the lock files the storage refused to delete: they are no
        error (the store is set up so, docs/deploy.md), so the exit code stays."""
        new = self.not_deleted[self._told_not_deleted :]
        self._told_not_deleted = len(self.not_deleted)
        own = [e for e in new if e["kind"] == "lock"]
        if own:
            last = max(e["stale_at_ns"] for e in own)
            out.notice(
                f"the storage refused to delete {counted(len(own), 'lock file')} of this "
                f"command ({_short_names(own)}): left to go stale at {iso_ns(last)[:19]}Z "
                "and be removed by the next prune or unlock that may delete"
            )
        others = [e for e in new if e["kind"] == "stale_lock"]
        if others:
            out.notice(
                f"the storage refused to delete {counted(len(others), 'stale lock file')} "
                f"of other processes ({_short_names(others)}): ignored; the next prune or "
                "unlock that may delete removes them"
            )

    def options(self, *, here: bool = True) -> RepoOptions:
        """How to reach and use repositories, from the global options; ``here``: for
        this process (retries are told to the user as they happen), else for a
        helper process."""
        from cas.repo import RepoOptions

        s3 = S3Options(
            endpoint=self.s3_endpoint,
            path_style=self.s3_path_style,
            storage_class=self.s3_storage_class,
            on_retry=self._retrying if here else None,
        )
        return RepoOptions(
            backend=(s3,),
            cache=not self.no_cache,
            cache_dir=self.cache_dir,
            connections=self.connections,
            client_state=here,
        )

    def helpers(self, repo: Repository, count: int | None) -> HelperPlan | None:
        """How helper processes reach ``repo`` and how many to start (``count``, else one
        per usable core), or None when none should (one core, 0 asked for, or a
        repository another process cannot open)."""
        n = count if count is not None else usable_cores()
        if n < 1 or (count is None and n < 2):
            return None
        from cas.repo.readerspec import reader_spec

        spec = reader_spec(repo, repo.location, self.options(here=False).backend)
        if spec is None:
            return None
        local = repo.is_local
        return HelperPlan(spec, n, local and not self.connections, self.connections or 4)

    def backend(self) -> Backend:
        """The storage stack of -r/--repo or CAS_REPOSITORY (for init)."""
        if not self.repo:
            raise UsageError("no repository given: use -r/--repo or set CAS_REPOSITORY")
        return self._storage(self.repo)

    def _storage(self, location: str) -> Backend:
        backend = repo_pkg.open_storage(location, self.options())
        self.backends.append(backend)
        return backend

    def requests(self) -> dict[str, Any] | None:
        """Storage requests made so far (all repositories this command opened, and its
        helper processes), or None."""
        total: dict[str, Any] = {}
        for summary in [*(request_summary(b) for b in self.backends), *self.helper_requests]:
            for k, v in (summary or {}).items():
                total[k] = total.get(k, 0) + v
        if "estimated_cost_usd" in total:
            total["estimated_cost_usd"] = round(total["estimated_cost_usd"], 6)
        return total or None

    def password(self, prompt: str = "repository password") -> bytes:
        """From a password file, a password command, CAS_PASSWORD, or a no-echo prompt."""
        if self.password_file:
            return read_password_file(self.password_file)
        if self.password_command:
            return run_password_command(self.password_command)
        env = os.environ.get("CAS_PASSWORD")
        if env is not None:
            return _not_empty(env.encode(), "CAS_PASSWORD is empty")
        if sys.stdin.isatty():
            text: str = click.prompt(prompt, hide_input=True, err=True)
            return _not_empty(text.encode(), "nothing was typed")
        raise NoPassword(
            f"no password given (the {prompt}): set CAS_PASSWORD, CAS_PASSWORD_FILE or "
            "CAS_PASSWORD_COMMAND "
            "(or --password-file, --password-command), or run on a terminal"
        )

    def _password_to_derive(self) -> bytes:
        """The password, asked for right before the key derivation, with the heap's free
        pages given back first (``release_free_heap``)."""
        password = self.password()
        release_free_heap()
        return password

    def open(self, *, reading: bool = False, write_only: bool = False) -> Repository:
        """Open and unlock the repository (a missing or newer one is refused before the
        password is asked for).  ``reading``: a command that only reads (restore, ls,
        dump ...) reads on when the storage contradicts what this client saw, warns
        and ends with exit 13, so a user can still get data out (spec §13.6); every
        other command stops at the first finding.  A write-only key (spec §4.4) is
        refused here, before anything is locked or written, unless the command says it
        can work with one (``write_only``)."""
        backend = self.backend()
        repo = repo_pkg.open_on(backend, self._password_to_derive, self.options())
        self.cleanups.append(repo.close)
        self.repos.append(repo)
        if reading:
            repo.generations.strict = False
            self.reading.append(repo)
        if not write_only:
            refuse_write_only(repo)
        return repo

    def open_other(self, location: str, password_file: str | None) -> Repository:
        """Open a second repository (copy, init --copy-keys-from) with the same S3 options.

        Its password comes from ``password_file``, else CAS_OTHER_PASSWORD, else a prompt.
        """

        def password() -> bytes:
            release_free_heap()
            if password_file:
                return read_password_file(password_file)
            if "CAS_OTHER_PASSWORD" in os.environ:
                env = os.environ["CAS_OTHER_PASSWORD"].encode()
                return _not_empty(env, "CAS_OTHER_PASSWORD is empty")
            if sys.stdin.isatty():
                text: str = click.prompt(f"password of {location}", hide_input=True, err=True)
                return _not_empty(text.encode(), "nothing was typed")
            raise NoPassword(
                f"no password for {location}: give its password file or set CAS_OTHER_PASSWORD"
            )

        repo = repo_pkg.open_on(self._storage(location), password, self.options())
        self.cleanups.append(repo.close)
        self.repos.append(repo)
        refuse_write_only(repo)
        return repo

    @contextmanager
    def locked(
        self, repo: Repository, *, exclusive: bool, command: str, deletes: bool = False
    ) -> Iterator[RepoLock | None]:
        """Hold a shared or exclusive repository lock for the block (unless --no-lock).

        ``deletes``: the command must delete objects (prune, forget, repair, tag); on
        storage that refuses deletes it fails here, before any work.  Other commands
        work on such storage: the lock files it will not delete are left to go stale
        and recorded in ``not_deleted``.
        """
        if self.no_lock:
            yield None
            return
        if deletes:
            try:
                repo.require_delete()
            except AccessDenied as e:
                raise DeleteRefused(command=command, detail=e.fields["detail"]) from e
        with repo.lock(
            exclusive=exclusive, command=command, wait=self.lock_wait, on_wait=self._lock_waiting
        ) as lock:
            yield lock
        from cas.repo.locks import STALE_AFTER

        self.not_deleted.extend({"name": n, "kind": "stale_lock"} for n in lock.stale_kept)
        for name, info in lock.left_behind:
            stale_ns = info.time_ns + int(STALE_AFTER * 1e9)
            self.not_deleted.append(
                {
                    "name": name,
                    "kind": "lock",
                    "stale_at": iso_ns(stale_ns),
                    "stale_at_ns": stale_ns,
                }
            )

    def _retrying(
        self, operation: str, failed: int, delay: float, error: TransientBackendError
    ) -> None:
        if self.output is not None:
            self.output.retrying(operation, failed + 1, DEFAULT_ATTEMPTS, delay, error)

    def _lock_waiting(self, conflict: LockedError, waited: float) -> None:
        if self.output is not None:
            self.output.lock_waiting(conflict, waited, self.lock_wait)


def refuse_write_only(repo: Repository, what: str | None = None) -> None:
    """KeyIsWriteOnly (exit 14) when ``repo`` was opened with a write-only key: the
    command (or ``what``) reads or removes what is stored, which such a key may not."""
    if repo.keys.CAN_OPEN_DATA:
        return
    if what is None:
        ctx = click.get_current_context(silent=True)
        name = ctx.command_path.split(" ", 1)[-1] if ctx is not None else "this command"
        what = f"run '{name}', which reads or removes what the repository holds"
    raise crypto.KeyIsWriteOnly(action=what)


def release_free_heap() -> None:
    """Give the free pages of the malloc heap back to the system (glibc's
    ``malloc_trim``; elsewhere nothing).

    Called right before a key derivation: Argon2id's 32 MiB come on top of what the
    process holds, and the imports leave about 2 MiB of freed heap resident (an
    unchanged re-backup of ``big`` peaked at 62 MiB there, 60 MiB after a trim).  One
    call, under a millisecond.
    """
    trim_heap()


def _trimmed(data: bytes) -> bytes:
    """A password as a file or a command gives it: trailing CR, LF, spaces and tabs go
    (as restic does: an editor's CRLF or a stray space must not lock anyone out)."""
    return data.rstrip(b"\r\n \t")


def _not_empty(password: bytes, where: str) -> bytes:
    if not password:
        raise EmptyPassword(where)
    return password


def read_password_file(path: str) -> bytes:
    """The file's content without trailing CR, LF, spaces and tabs; never empty."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"cannot read password file {path}: {e.strerror}") from None
    return _not_empty(_trimmed(data), f"password file {path} holds none")


def run_password_command(command: str) -> bytes:
    """Run the command (no shell) and take its standard output without trailing CR, LF,
    spaces and tabs.  Its standard error goes to ours (it may say why it failed)."""
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise UsageError(f"password command {command!r}: {e}") from None
    if not argv:
        raise UsageError("the password command is empty")
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, check=False)
    except OSError as e:
        raise UsageError(f"cannot run password command {argv[0]!r}: {e.strerror}") from None
    if proc.returncode != 0:
        raise UsageError(f"password command {argv[0]!r} exited with status {proc.returncode}")
    return _not_empty(_trimmed(proc.stdout), f"password command {argv[0]!r} printed none")


def new_password(password_file: str | None) -> bytes:
    """A new password from --new-password-file, or asked twice on the terminal."""
    if password_file:
        pw = read_password_file(password_file)
    elif sys.stdin.isatty():
        pw = click.prompt(
            "new password", hide_input=True, confirmation_prompt=True, err=True
        ).encode()
    else:
        raise NoPassword("no new password given: use --new-password-file or run on a terminal")
    return _not_empty(pw, "nothing was typed")


def kdf_params(
    opslimit: int | None, memlimit: int | None, test_weak_kdf: bool = False
) -> crypto.KdfParams:
    """Argon2id parameters: the default unless overridden.  Costs below the minimum of
    spec §4.2 are refused (WeakKdf, exit 2) unless the test suite's explicit switch
    ``CAS_TEST_WEAK_KDF=1`` is set; costs over the readers' ceilings always are."""
    if test_weak_kdf:
        params = crypto.KdfParams.for_tests(
            opslimit or crypto.DEFAULT_OPSLIMIT, memlimit or crypto.DEFAULT_MEMLIMIT
        )
    else:
        params = crypto.KdfParams.new(opslimit=opslimit, memlimit=memlimit)
    crypto.check_writer_costs(params)
    return params


def kdf_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--kdf-opslimit / --kdf-memlimit (hidden; for slow machines, within the limits of
    spec §4.2) and --test-weak-kdf (hidden; lets a test suite go below the minimum)."""
    f = click.option(
        "--test-weak-kdf",
        is_flag=True,
        envvar="CAS_TEST_WEAK_KDF",
        hidden=True,
        help="for test suites only: allow KDF costs below the minimum",
    )(f)
    f = click.option(
        "--kdf-memlimit", type=int, envvar="CAS_KDF_MEMLIMIT", hidden=True, default=None
    )(f)
    return click.option(
        "--kdf-opslimit", type=int, envvar="CAS_KDF_OPSLIMIT", hidden=True, default=None
    )(f)


PROGRESS_EVERY = 0.1  # seconds between redraws of the status line on a terminal
PROGRESS_LINE_EVERY = 10.0  # seconds between progress lines off a terminal (-v)


class Output:
    """Human lines on stdout, or JSON lines ending with the summary; progress on stderr:
    a status line redrawn on a terminal, or with -v off a terminal a line every ten
    seconds (never with --json or -q)."""

    def __init__(self, g: Globals) -> None:
        self.g = g
        self.json = g.json
        self.quiet = g.quiet
        shown = not g.json and not g.quiet
        self.progress_enabled = shown and sys.stderr.isatty()
        self.progress_lines = shown and not self.progress_enabled and g.verbose > 0
        g.output = self
        # Off a terminal the first line comes after PROGRESS_LINE_EVERY: short runs print none.
        self._last_progress = time.monotonic() if self.progress_lines else 0.0
        self._phase = ""  # what report() was last told, and since when
        self._phase_started = 0.0
        self._answering = False  # lines of a listing's answer: -q does not hide them
        self.warnings: list[str] = []

    def emit(
        self,
        doc: dict[str, Any],
        human: Callable[[], None] | None = None,
        *,
        answer: bool = False,
    ) -> None:
        """Print ``doc`` as the JSON summary line (``message_type: "summary"``, the
        last line of every ``--json`` output), or call ``human`` to print it for people.

        ``answer``: ``human`` prints what the command exists to print (a listing):
        ``-q`` silences progress and chatter, never that.  Object documents get a
        ``requests`` key: storage requests by kind, bytes moved and their estimated
        cost; people see a line about them for S3.
        """
        self.clear_progress()
        self.g.warn_damaged(self)
        self.g.warn_not_deleted(self)
        requests = self.g.requests()
        if requests is not None:
            doc.setdefault("requests", requests)
        if self.g.not_deleted:
            doc.setdefault("not_deleted", list(self.g.not_deleted))
        if (
            human is not None
            and requests
            and any(b.location.startswith("s3://") for b in self.g.backends)
        ):
            inner = human

            def human() -> None:
                inner()
                self.line(_describe_requests(requests))

        if self.json:
            self.message({"message_type": "summary", **doc})
        elif human is not None and (answer or not self.quiet):
            self._answering = answer
            try:
                human()
            finally:
                self._answering = False

    def message(self, doc: dict[str, Any]) -> None:
        """One JSON object on one line of stdout (with --json only): the lines a
        command streams before its summary, each saying its ``message_type``."""
        if self.json:
            click.echo(json.dumps(doc, sort_keys=True, default=json_default))

    def line(self, text: str) -> None:
        """A human line (suppressed by --json, and by --quiet unless it is an answer)."""
        if not self.json and (self._answering or not self.quiet):
            self.clear_progress()
            click.echo(text)

    def warn(self, text: str, *, record: bool = True) -> None:
        """A warning on stderr (always; JSON consumers also get them in the result's
        ``warnings`` unless not ``record``: the result says it another way)."""
        if record:
            self.warnings.append(text)
        self.clear_progress()
        click.echo(f"warning: {text}", err=True)

    def notice(self, text: str) -> None:
        """A warning on stderr that leaves the exit code as it is (not in ``warnings``)."""
        self.clear_progress()
        click.echo(f"warning: {text}", err=True)

    def retrying(
        self,
        operation: str,
        attempt: int,
        attempts: int,
        delay: float,
        error: TransientBackendError,
    ) -> None:
        """A storage request failed for a reason that may pass and is sent again after
        ``delay`` seconds: told on a terminal and with -v (with --json: -v only, as a
        ``retry`` line), so a slow store is seen as slow, not as hung."""
        why = _reason(error)
        if self.json:
            if self.g.verbose:
                self.message(
                    {
                        "message_type": "retry",
                        "operation": operation,
                        "attempt": attempt,
                        "attempts": attempts,
                        "delay": round(delay, 3),
                        "error": why,
                    }
                )
        elif self.progress_enabled or (self.g.verbose and not self.quiet):
            self.note(
                f"retrying {operation} in {delay:.1f} s: {why} (attempt {attempt} of {attempts})"
            )

    def lock_waiting(self, conflict: LockedError, waited: float, wait: float) -> None:
        """Waiting for a lock (--retry-lock): told like retries."""
        holder = conflict.fields.get("detail") or str(conflict)
        if self.json:
            if self.g.verbose:
                self.message(
                    {
                        "message_type": "lock_wait",
                        "holder": holder,
                        "waited": round(waited, 3),
                        "wait": wait,
                    }
                )
        elif self.progress_enabled or (self.g.verbose and not self.quiet):
            self.note(f"waiting for a lock ({waited:.1f} of {wait:g} s): {holder}")

    def note(self, text: str) -> None:
        """A line on stderr about what is happening (not a warning; the status line
        is redrawn below it)."""
        self.clear_progress()
        click.echo(text, err=True)

    @property
    def shows_progress(self) -> bool:
        """Whether progress is shown at all (worth measuring totals for)."""
        return self.progress_enabled or self.progress_lines

    def progress_due(self) -> bool:
        """Whether ``progress`` would draw now: callers skip formatting a line otherwise."""
        every = PROGRESS_EVERY if self.progress_enabled else PROGRESS_LINE_EVERY
        return self.shows_progress and time.monotonic() - self._last_progress >= every

    def progress(self, text: str, force: bool = False) -> None:
        """Overwrite the status line at most ten times a second (``force``: now), or
        off a terminal with -v print it as a line every ten seconds."""
        if not (force and self.progress_enabled) and not self.progress_due():
            return
        self._last_progress = time.monotonic()
        if self.progress_enabled:
            width = max(20, _term_width() - 1)
            click.echo("\r\x1b[K" + text[:width], nl=False, err=True)
        else:
            click.echo(text, err=True)

    def report(self, what: str, done: int | None = None, total: int | None = None) -> None:
        """A :class:`cas.progress.Progress` drawn as the status line: ``done`` of
        ``total`` with the percentage and the time left at the pace of this phase."""
        now = time.monotonic()
        if what != self._phase:
            self._phase, self._phase_started = what, now
        if not self.progress_due():
            return
        if done is None:
            self.progress(what)
        elif not total:
            self.progress(f"{what} {done}")
        else:
            left = completion(done, total, now - self._phase_started)
            self.progress(f"{what} {done}/{total} {left}")

    def clear_progress(self) -> None:
        """Erase the status line before normal output."""
        if self.progress_enabled and self._last_progress:
            click.echo("\r\x1b[K", nl=False, err=True)
            self._last_progress = 0.0


def iso_ns(ns: int) -> str:
    """UTC time with nanoseconds, RFC 3339 (``2026-12-06T16:40:00.123456789Z``)."""
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def _short_names(entries: list[dict[str, Any]]) -> str:
    """``locks/1a2b3c4d, locks/5e6f7a8b`` (and how many more): lock files, short."""
    names = [e["name"].rsplit("/", 1)[-1][:8] for e in entries]
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return "locks/" + ", locks/".join(names[:3]) + more


def clock_text(seconds: float) -> str:
    """``1:02:03`` or ``2:03``: a duration for a status line."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def completion(done: float, total: float, elapsed: float) -> str:
    """``45.2% ETA 0:15``: how far ``done`` is of ``total`` and the time left at the
    pace so far (``ETA --:--`` until something is done)."""
    share = min(1.0, done / total) if total > 0 else 0.0
    if done <= 0 or elapsed <= 0:
        return f"{100 * share:.1f}% ETA --:--"
    left = elapsed * max(0.0, total - done) / done
    return f"{100 * share:.1f}% ETA {clock_text(left)}"


def _reason(error: TransientBackendError) -> str:
    """Why a request failed, short: ``503 SlowDown`` where the store said so, else
    the error's own text after "failed:" (it names the request, which the caller
    already shows)."""
    reason = error.fields.get("reason")
    if reason:
        return str(reason)
    detail = str(error.fields.get("detail") or error)
    return detail.split(" failed: ", 1)[-1]


def _describe_requests(r: dict[str, Any]) -> str:
    kinds = ", ".join(f"{r[k]} {k}" for k in ("PUT", "GET", "HEAD", "LIST", "DELETE") if r.get(k))
    retried = f", {r['retries']} retried" if r.get("retries") else ""
    up, down = human_bytes(r.get("bytes_up", 0)), human_bytes(r.get("bytes_down", 0))
    cost = r.get("estimated_cost_usd", 0)
    return (
        f"storage requests: {kinds or 'none'}{retried}; {up} up, {down} down; "
        f"estimated cost ${cost:.4f}"
    )


def _term_width() -> int:
    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except OSError:
        return 80
    return columns or 80  # a terminal that never set its size says 0


def json_default(o: Any) -> Any:
    """``json.dumps``'s fallback: bytes as hex (IDs, raw names)."""
    if isinstance(o, bytes):
        return o.hex()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def fs_text(name: bytes) -> str:
    """A path for human output: undecodable bytes shown as \\x escapes, never an exception."""
    return name.decode("utf-8", "backslashreplace")


def one_line(text: str) -> str:
    """Untrusted text (a key file's unauthenticated members) for a terminal: as is when
    printable, else escaped, so it can add no line and no escape sequence."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def human_bytes(n: float) -> str:
    """1.5 GiB style sizes."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


pass_globals = click.make_pass_decorator(Globals)


def fail(message: str) -> CasError:
    """A CasError for a command-level failure (exit 1)."""
    return CasError(message)
