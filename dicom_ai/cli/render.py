"""How the operator commands print for a person: tables of literal text with whole UIDs.

Everything shown comes from the database or the configuration (AE titles, error messages, patient IDs), so it is
printed as literal text, never parsed as rich markup: an error that mentions `[nodes]` must read `[nodes]`. UID
columns never wrap or get cut (operators copy UIDs from them): the console is made as wide as the widest table
needs, whatever the terminal (or pipe) width. The status, audit and outbox commands print through here.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

__all__ = ["escape", "literal", "print_out", "table", "text_column", "uid_column"]

MIN_WIDTH = 100  # a narrow terminal still gets readable tables
PIPE_WIDTH = 160  # output to a pipe or file: the narrowest it gets (tables are as wide as their longest row)


def literal(value: object) -> Text:
    """A table cell shown exactly as given (no markup, no highlighting)."""
    return Text("" if value is None else str(value))


def uid_column(header: str) -> Column:
    """A column of UIDs (or other identifiers an operator copies): never wrapped, never cut."""
    return Column(header, no_wrap=True, overflow="ignore")


def text_column(header: str) -> Column:
    """A column of free text: wrapped when the table is wider than the screen."""
    return Column(header, overflow="fold")


def table(*columns: Column | str, title: str) -> Table:
    """A table; plain string headers become text columns."""
    return Table(*(text_column(c) if isinstance(c, str) else c for c in columns), title=title)


def print_out(*renderables: RenderableType | str, **print_options: Any) -> None:
    """Print on stdout; markup in strings is honoured (escape what is interpolated). On a terminal, tables get at
    least the width their UID columns need and free text wraps; into a pipe or file nothing wraps (grep finds
    every line whole)."""
    terminal = sys.stdout.isatty()
    width = max(shutil.get_terminal_size((MIN_WIDTH, 24)).columns, MIN_WIDTH) if terminal else PIPE_WIDTH
    probe = Console(width=width, highlight=False)
    for renderable in renderables:
        if isinstance(renderable, Table):
            needed = Measurement.get(probe, probe.options.update_width(1 << 16), renderable)
            width = max(width, needed.minimum if terminal else needed.maximum)
    console = Console(width=width, highlight=False, soft_wrap=True)  # lines of text are never broken either
    for renderable in renderables:
        console.print(renderable, **print_options)
