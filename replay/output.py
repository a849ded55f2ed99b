"""How every data command prints: one set of formats, one writer.

``-f table|csv|json|ndjson|parquet`` and ``-o FILE`` mean the same on every command
(``replay.cli`` declares the two options once, from ``FORMATS``); without ``-f``, the
suffix of ``-o FILE`` picks the format (``x.json`` writes JSON), else a table.  Rows
reach the writer as Arrow record batches - a query's stream (``queries.open_sql``) or
a command's own rows (``rows_reader``) - so csv/json/ndjson/parquet are written by one
function, batch by batch, atomically to ``-o FILE`` or to stdout.

A table goes to a terminal as a rich table that fits its width (cells wrap, names are
never cut); piped or written to a file it is plain aligned text, one row a line, so
``grep`` and ``awk`` see whole rows.
"""

from __future__ import annotations

import contextlib
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Iterator

FORMATS = ("table", "csv", "json", "ndjson", "parquet")
Fmt = Enum("Fmt", {f: f for f in FORMATS}, type=str)  # the option's choices, from FORMATS
SUFFIX_FORMAT = {".csv": Fmt.csv, ".json": Fmt.json, ".ndjson": Fmt.ndjson, ".jsonl": Fmt.ndjson,
                 ".parquet": Fmt.parquet}
TABLE_ROWS = 200  # a table shows this many rows and says how many more there were


class OutputError(ValueError):
    """A usage error in the output options (exit 2)."""


def resolve(fmt: "Fmt | str | None", dest: Path | None) -> "Fmt":
    """-f as given; without it, -o FILE's suffix (x.json writes JSON), else a table."""
    if fmt is not None:
        return Fmt(fmt)
    if dest is not None and str(dest) != "-":
        return SUFFIX_FORMAT.get(Path(dest).suffix.lower(), Fmt.table)
    return Fmt.table


class RowsReader:
    """A command's own rows as the record-batch stream the writers take (the shape of
    ``queries.open_sql``'s reader)."""

    def __init__(self, rows: list[dict], columns: list[str]):
        import pyarrow as pa

        names = list(columns) + [k for r in rows for k in r if k not in columns]
        names = list(dict.fromkeys(names))
        if not rows:
            self._table = pa.table({c: pa.array([], pa.string()) for c in names})
        else:
            cols = {}
            for c in names:
                vals = [r.get(c) for r in rows]
                try:
                    cols[c] = pa.array(vals)
                except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed kinds (a profile's numbers and flags): text
                    cols[c] = pa.array([None if v is None else json.dumps(v, default=str) if isinstance(v, (dict, list))
                                        else str(v) for v in vals], pa.string())
            self._table = pa.table(cols)
        self.schema = self._table.schema

    def __iter__(self):
        yield from self._table.to_batches()

    def total_rows(self) -> int:
        return self._table.num_rows


def emit(rows: list[dict], columns: list[str], fmt: "Fmt", dest: Path | None = None, title: str | None = None,
         single: bool = False, con=None) -> None:
    """Rows a command made, in ``fmt``: a table of ``columns``; every key in the data
    formats (``columns`` first).  ``single``: the command's result is one record (a
    run's summary), written as a JSON object rather than an array of one.  ``con``: a
    ``table_out`` console that several tables of one command share."""
    if fmt is Fmt.table:
        if con is not None:
            print_table(con, rows, columns, title)
            return
        with table_out(dest) as c:
            print_table(c, rows, columns, title)
        return
    emit_stream(RowsReader(rows, columns), fmt, dest, single=single)


def emit_stream(reader, fmt: "Fmt", dest: Path | None, title: str | None = None, max_rows: int = TABLE_ROWS,
                single: bool = False, layout=None) -> None:
    """Print or write a result stream batch by batch, in bounded memory however many
    rows it has.  The table shows the first ``max_rows`` rows and how many followed
    (``layout``: a function rendering those rows as text instead, e.g. a kernel tool's
    own layout); csv, json, ndjson and parquet stream every row to ``dest``
    (atomically) or stdout."""
    if fmt is Fmt.table:
        rows: list[dict] = []
        full = False
        for b in reader:
            rows += b.slice(0, max_rows - len(rows)).to_pylist()
            if len(rows) >= max_rows:
                full = True
                break
        with table_out(dest) as con:
            if layout is not None:
                for line in layout(rows):
                    con.print(line, markup=False, highlight=False, soft_wrap=True)
            else:
                print_table(con, rows, reader.schema.names, title)
        if full and (total := reader.total_rows()) > len(rows):
            _err(f"({total - len(rows):,} more rows: use --format csv|json|ndjson|parquet)")
        return
    if dest is None or str(dest) == "-":
        if fmt is Fmt.parquet and dest is None:
            raise OutputError("--format parquet needs -o FILE (-o - for stdout)")
        write_rows(reader, fmt, sys.stdout.buffer, single)
        sys.stdout.buffer.flush()
        return
    from .workspace import atomic_output

    with atomic_output(dest) as tmp, open(tmp, "wb") as f:
        n = write_rows(reader, fmt, f, single)
    _err(f"wrote {n:,} rows to {dest}")


def write_rows(reader, fmt: "Fmt", f, single: bool = False) -> int:
    """Stream record batches to a binary file object as csv, json, ndjson or parquet."""
    import polars as pl
    import pyarrow as pa

    n = 0
    if fmt is Fmt.parquet:
        import pyarrow.parquet as pq

        with pq.ParquetWriter(f, reader.schema, compression="zstd") as w:
            for b in reader:
                w.write_batch(b)
                n += b.num_rows
        return n
    if fmt is Fmt.csv:
        nested = [i for i, t in enumerate(reader.schema.types) if pa.types.is_nested(t)]
        for b in reader:
            for i in nested:  # CSV has no lists or records: write them as JSON text
                b = b.set_column(i, b.schema.names[i], pa.array(
                    [None if v is None else json.dumps(v, default=str) for v in b.column(i).to_pylist()], pa.string()))
            f.write(pl.from_arrow(b).write_csv(include_header=n == 0).encode())
            n += b.num_rows
        if n == 0:
            f.write((",".join(reader.schema.names) + "\n").encode())
        return n
    if fmt is Fmt.json and single:  # one record: an object, as a person reads it
        rows = [r for b in reader for r in b.to_pylist()]
        f.write((json.dumps(rows[0] if rows else {}, indent=2, default=str) + "\n").encode())
        return len(rows)
    first = True  # JSON: an array, one row a line; ndjson: one row a line
    if fmt is Fmt.json:
        f.write(b"[")
    for b in reader:
        if b.num_rows:
            lines = pl.from_arrow(b).write_ndjson().encode()
            if fmt is Fmt.json:
                lines = (b"\n  " if first else b",\n  ") + lines.rstrip(b"\n").replace(b"\n", b",\n  ")
            f.write(lines)
            first = False
        n += b.num_rows
    if fmt is Fmt.json:
        f.write(b"]\n" if first else b"\n]\n")
    return n


@contextlib.contextmanager
def table_out(dest: Path | None) -> Iterator:
    """A rich Console for tables: stdout, or ``dest`` written atomically (plain text)."""
    from rich.console import Console

    if dest is None or str(dest) == "-":
        yield Console(soft_wrap=False)
        return
    from .workspace import atomic_output

    with atomic_output(dest) as tmp, open(tmp, "w") as f:
        yield Console(file=f, soft_wrap=False, width=10_000)


def print_table(con, rows: list[dict], columns: list[str], title: str | None = None) -> None:
    """A table on ``con``: boxed and fitted to a terminal's width, plain text elsewhere."""
    if con.is_terminal:
        if title:  # its own line, as wide as it is: a table's own title wraps to the table's width
            from rich.text import Text

            con.print(Text(title, style="table.title"), soft_wrap=True)
        con.print(_rich_table(rows, columns, None, con.width))
        return
    for line in plain_table(rows, columns, title):
        con.print(line, markup=False, highlight=False, soft_wrap=True)


def _numeric(rows: list[dict], c: str) -> bool:
    vals = [r.get(c) for r in rows if r.get(c) is not None]
    return bool(vals) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)


def fit_widths(natural: list[int], least: list[int], room: int) -> list[int] | None:
    """Column widths that fit ``room``: each at least its longest word (``least``), the
    space left shared in proportion to what each would still like; None when the
    natural widths fit."""
    if sum(natural) <= room:
        return None
    spare = max(room - sum(least), 0)
    want = [n - m for n, m in zip(natural, least)]
    total = sum(want) or 1
    widths = [m + spare * w // total for m, w in zip(least, want)]
    for i in sorted(range(len(widths)), key=lambda i: want[i] - (widths[i] - least[i]), reverse=True):
        if sum(widths) >= min(room, sum(natural)):
            break
        widths[i] += 1 if widths[i] < natural[i] else 0
    return widths


def _rich_table(rows: list[dict], columns: list[str], title: str | None, width: int):
    """Cells wrap between words, never inside one (unless a word is wider than the
    screen); when the headers are what does not fit, they break after their '_'."""
    from rich.table import Table
    from rich.text import Text

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    room = width - (3 * len(columns) + 1)  # borders and padding
    natural = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    headers = list(columns)
    if sum(natural) > room:
        headers = [c.replace("_", "_ ") for c in columns]
    least = [min(max([len(w) for row in cells for w in row[i].split()] + [len(w) for w in headers[i].split()] or [1]),
                 room) for i in range(len(columns))]
    widths = fit_widths(natural, least, room)
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(headers[i], justify="right" if _numeric(rows, c) else "left", overflow="fold",
                     width=None if widths is None else widths[i])
    for row in cells:  # data, never rich markup: "lruvec[node0].lists", a comm "[kworker/0:1]"
        t.add_row(*(Text(x) for x in row))
    return t


def plain_table(rows: list[dict], columns: list[str], title: str | None = None) -> list[str]:
    """Aligned plain text: a title line, a header, one line a row (two spaces between
    columns, numbers right-aligned)."""
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    right = [_numeric(rows, c) for c in columns]

    def line(vals):
        return "  ".join(v.rjust(w) if rj else v.ljust(w) for v, w, rj in zip(vals, widths, right)).rstrip()

    out = [title] if title else []
    return out + [line(columns)] + [line(r) for r in cells]


def cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.4g}"
    return str(v)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)
