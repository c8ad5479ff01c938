"""How the command line shows rows: aligned tables, CSV, JSON, and counted nouns ("1 row")."""
from __future__ import annotations

import csv
import decimal
import unicodedata
from typing import IO, Sequence

import orjson

TABLE_MAX_ROWS = 1000  # rows `pushlake sql` prints of a result as a table; CSV and JSON: every row
MAX_CELL = 48  # a table cell's display width; longer values end with "…"
_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``plural(1, "row")`` is "1 row", ``plural(2, "row")`` "2 rows"."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def display_width(s: str) -> int:
    """Columns a terminal gives ``s``: wide (CJK, most emoji) characters take two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)


def _cell(v) -> str:
    s = "NULL" if v is None else str(v).translate(_ESCAPES)  # one line per row, whatever the value holds
    if display_width(s) <= MAX_CELL:
        return s
    out, w = [], 0
    for c in s:
        w += display_width(c)
        if w > MAX_CELL - 1:
            break
        out.append(c)
    return "".join(out) + "…"


def _numeric(v) -> bool:
    return isinstance(v, (int, float, decimal.Decimal)) and not isinstance(v, bool)


def table_lines(cols: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    """Header, rule and rows, the columns aligned on ``|``: numbers to the right, the rest to the
    left (by display width, so wide characters keep the columns straight)."""
    body = [[_cell(v) for v in r] for r in rows]
    head = [_cell(c) for c in cols]
    widths = [max([display_width(h)] + [display_width(r[i]) for r in body]) for i, h in enumerate(head)]
    right = [bool(rows) and all(_numeric(r[i]) for r in rows if r[i] is not None) and
             any(r[i] is not None for r in rows) for i in range(len(cols))]

    def line(cells: Sequence[str]) -> str:
        parts = []
        for c, w, r in zip(cells, widths, right):
            pad = " " * (w - display_width(c))
            parts.append(f" {pad + c if r else c + pad} ")
        return "|".join(parts).rstrip()
    return [line(head), "+".join("-" * (w + 2) for w in widths)] + [line(r) for r in body]


def row_count(shown: int, more: int = 0, hint: str = "--max-rows 0") -> str:
    """The line under a table: "(2 rows)", or "(1000 rows shown, 5 more rows; --max-rows 0 shows all)"."""
    if not more:
        return f"({plural(shown, 'row')})"
    return f"({plural(shown, 'row')} shown, {plural(more, 'more row')}; {hint} shows all)"


def write_table(out: IO[str], cols: Sequence[str], rows: Sequence[Sequence], more: int = 0,
                hint: str = "--max-rows 0") -> None:
    for ln in table_lines(cols, rows):
        out.write(ln + "\n")
    out.write(row_count(len(rows), more, hint) + "\n")


def write_csv(out: IO[str], cols: Sequence[str], rows: Sequence[Sequence]) -> None:
    """RFC 4180 fields with Unix line ends; NULL is an empty field."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(cols)
    w.writerows(rows)


def json_text(obj) -> str:
    return orjson.dumps(obj, default=str, option=orjson.OPT_INDENT_2).decode() + "\n"


def write_json(out: IO[str], cols: Sequence[str], rows: Sequence[Sequence]) -> None:
    """An array of objects, one per row (values that JSON has no type for, such as dates, as text)."""
    out.write(json_text([dict(zip(cols, r)) for r in rows]))
