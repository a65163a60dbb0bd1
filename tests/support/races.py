"""Make a source change happen at a chosen step of a backup, without timing.

cas reaches every entry by its name inside an open directory (``dir_fd=``),
so wrapping ``os.lstat`` or ``os.open`` and acting on the first such call for
one name puts the change exactly between listing and ``lstat``, or between
``lstat`` and ``open``.  :func:`hooked` serves in-process tests (with
``monkeypatch``), :func:`prelude` a real ``cas`` subprocess (``run_cas``).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

GROWTH = b"g" * 5000


def _vanish(dir_fd: int, name: bytes) -> None:
    if stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _grow(dir_fd: int, name: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_APPEND, dir_fd=dir_fd)
    try:
        os.write(fd, GROWTH)
    finally:
        os.close(fd)


def _shrink(dir_fd: int, name: bytes) -> None:
    fd = os.open(name, os.O_WRONLY, dir_fd=dir_fd)
    try:
        os.ftruncate(fd, os.fstat(fd).st_size // 2)
    finally:
        os.close(fd)


def _replace(dir_fd: int, name: bytes) -> None:
    fd = os.open(b".replacement", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
    os.write(fd, b"another file")
    os.close(fd)
    os.rename(b".replacement", name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _refuse(dir_fd: int, name: bytes) -> None:
    """Not a change: the call itself fails, as for a file this process may not read."""
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


CHANGES: dict[str, Callable[[int, bytes], None]] = {
    "vanish": _vanish,
    "grow": _grow,
    "shrink": _shrink,
    "replace": _replace,
    "refuse": _refuse,
}


def hooked(call: str, name: bytes, change: str) -> Callable[..., Any]:
    """``os.<call>`` that first applies ``change`` to ``name`` the first time it is reached."""
    real = getattr(os, call)
    fired: list[bool] = []

    def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
        dir_fd = kwargs.get("dir_fd")
        if path == name and dir_fd is not None and not fired:
            fired.append(True)
            CHANGES[change](dir_fd, name)
        return real(path, *args, **kwargs)

    return wrapper


def prelude(call: str, name: bytes, change: str) -> str:
    """Code for ``run_cas(prelude=...)`` installing :func:`hooked` in the cas process."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return (
        f"import os, sys; sys.path.insert(0, {root!r})\n"
        "from tests.support.races import hooked\n"
        f"os.{call} = hooked({call!r}, {name!r}, {change!r})"
    )


def everywhere(site: Path, call: str, name: bytes, change: str) -> dict[str, str]:
    """The environment that installs :func:`hooked` in every Python process of a run,
    helper processes included: a ``sitecustomize`` module in ``site``, on PYTHONPATH."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(prelude(call, name, change) + "\n")
    return {"PYTHONPATH": str(site)}
