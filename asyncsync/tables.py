"""Tables for a person: boxed, numbers right-aligned and formatted, long text folded; a
table too wide for the terminal becomes a block of lines an item (:class:`FittedTable`)."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.padding import Padding
from rich.table import Column, Table
from rich.text import Text


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    title: str = "",
    *,
    show_header: bool = True,
) -> Table:
    """A boxed rich table; numeric columns right-aligned, text left-aligned, long text
    folded inside its cell so the table keeps to the terminal's width."""
    out = Table(
        *(
            Column(
                h,
                justify="right" if _numeric(rows, i) else "left",
                overflow="fold",
                no_wrap=_numeric(rows, i),
                min_width=min(len(h), 12),
            )
            for i, h in enumerate(headers)
        ),
        title=title or None,
        title_justify="left",
        box=box.SQUARE,
        show_header=show_header,
        header_style="bold",
    )
    for row in rows:
        out.add_row(*(cell(c) for c in row))
    return out


class FittedTable:
    """:func:`table` where it fits the width it is given without breaking a word; on a
    narrower terminal, a block an item instead — its first cell, then every other cell
    after its header — which wraps, so no column is cut (``status --all-accounts`` cut
    its last column below about 84 columns)."""

    def __init__(self, headers: Sequence[str], rows: Sequence[Sequence[object]], title: str):
        self.headers, self.rows, self.title = headers, rows, title

    def needs(self) -> int:
        """Columns the table takes with every cell whole on one line (a text cell may
        wrap between its words)."""
        widths = [
            max(len(h), *(_widest(cell(r[i]), _numeric(self.rows, i)) for r in self.rows))
            for i, h in enumerate(self.headers)
        ]
        return sum(widths) + 3 * len(widths) + 1  # "│ " and " " around each cell, the last "│"

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.rows or self.needs() <= options.max_width:
            yield table(self.headers, self.rows, self.title)
            return
        yield Text(self.title)
        for row in self.rows:
            cells = [Text.assemble(f"{h} ", cell(c)) for h, c in zip(self.headers[1:], row[1:],
                                                                       strict=True)]  # fmt: skip
            yield Text(str(cell(row[0])), "bold")
            yield Padding(Text(" · ").join(cells), (0, 0, 0, 2))


def _widest(text: str | Text, numeric: bool) -> int:
    words = str(text).split() or [""]
    return len(str(text)) if numeric else max(len(w) for w in words)


def _numeric(rows: Sequence[Sequence[object]], i: int) -> bool:
    values = [r[i] for r in rows if r[i] not in ("", None)]
    return bool(values) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    )


def cell(value: object) -> str | Text:
    if isinstance(value, Text):  # styled already (a STALE account in red)
        return value
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
