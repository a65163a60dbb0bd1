"""A click group whose commands are imported only when one is used.

Every ``cas`` run starts a fresh interpreter; importing every command module (backup
pulls the archiver and its worker pool, check the checker, mount the FUSE view)
would cost each run, however small, the imports of all of them.  The group knows
its commands from a table of name -> (module, attribute, short help): ``--help``
lists the names and short helps from the table, and a command's module is
imported when the command is looked up (to run it, or for its own ``--help``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import click


@dataclass(frozen=True)
class LazyCommand:
    """Where a command is defined and what ``cas --help`` says of it."""

    module: str  # e.g. "cas.cli.cmd_snapshots"
    attribute: str  # the click command in that module
    summary: str  # the command's short help as click makes it from its help (no limit)


class LazyCommands(MutableMapping[str, click.Command]):
    """The commands of a group: their names known up front, each imported (and passed
    to ``prepare`` once) when first looked up."""

    def __init__(
        self, table: Mapping[str, LazyCommand], prepare: Callable[[click.Command], None]
    ) -> None:
        self.table = dict(table)
        self._prepare = prepare
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        cmd = self._loaded.get(name)
        if cmd is None:
            where = self.table[name]  # KeyError: no such command
            cmd = getattr(importlib.import_module(where.module), where.attribute)
            assert isinstance(cmd, click.Command), where
            self._prepare(cmd)
            self._loaded[name] = cmd
        return cmd

    def __setitem__(self, name: str, cmd: click.Command) -> None:
        self._loaded[name] = cmd  # click's add_command: already imported

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self.table.pop(name, None)
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted({*self.table, *self._loaded}))

    def __len__(self) -> int:
        return len({*self.table, *self._loaded})

    def __contains__(self, name: object) -> bool:
        return name in self.table or name in self._loaded

    def summary(self, name: str) -> str:
        """The short help of ``name`` without importing it (unless it was added loaded)."""
        if name in self.table:
            return self.table[name].summary
        return self._loaded[name].get_short_help_str(1 << 20)


class LazyGroup(click.Group):
    """A group over :class:`LazyCommands` (give ``table`` and ``prepare``)."""

    commands: LazyCommands

    def __init__(
        self,
        *args: Any,
        table: Mapping[str, LazyCommand],
        prepare: Callable[[click.Command], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.commands = LazyCommands(table, prepare)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help``, as click writes it, from the table."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(map(len, names))
        rows = [
            (name, click.Command(name, help=self.commands.summary(name)).get_short_help_str(limit))
            for name in names
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)
