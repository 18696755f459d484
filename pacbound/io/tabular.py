"""CSV files: one example per row, numeric features and (for labeled data) a label column.

The delimiter is ``--csv-delimiter`` (default ``,``). Every error names the file, the line
and the column, quotes at most :data:`SHOWN_CHARS` characters of an offending field, and
says when the file looks separated by another character (``;``, tab, ``|``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pacbound.errors import InvalidInputError
from pacbound.io.readers import RawData, name_list

#: Column names taken as the label in a CSV file with a header, when none is given.
LABEL_COLUMN_NAMES = ("label", "labels", "y", "target", "class")
#: Characters of a field quoted in an error message.
SHOWN_CHARS = 60
_SPELLED = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "space": " "}
_OTHER_DELIMITERS = (";", "\t", "|", ",")


def parse_delimiter(text: str) -> str:
    """One character; ``tab`` or ``\\t`` for a tab (shells make a literal tab awkward)."""
    value = _SPELLED.get(text.lower(), text)
    if len(value) != 1 or value in '"\r\n' or value.isalnum() or value in ".-+":
        raise InvalidInputError(
            f"--csv-delimiter {text!r}: give one separator character such as ',' ';' '|' or "
            "'tab' (not a quote, letter, digit, sign or decimal point)",
            param="--csv-delimiter",
        )
    return value


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` cut to ``limit`` characters (``…`` marks the cut), for quoting in errors."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_csv(
    file: Path,
    label_column: str | int | None,
    *,
    delimiter: str = ",",
    labels: bool = True,
    option: str = "--data",
) -> RawData:
    """Features and labels of a CSV file.

    Without ``labels`` the label column is optional: the one given (dropped and recorded), or
    a header column with a label name (:data:`LABEL_COLUMN_NAMES`), else none; every other
    column is a feature.
    """
    rows = _rows(file, delimiter, option)
    if not rows:
        raise InvalidInputError(f"{option}: {file} is empty; it has no rows", param=option)
    header = rows[0] if not all(_is_number(c) for c in rows[0]) else None
    body = rows[1:] if header is not None else rows
    width = len(rows[0])
    hint = _delimiter_hint(rows[0], delimiter)
    column = _label_index(label_column, header, width, file, required=labels, hint=hint)
    values = np.empty((len(body), width), dtype=np.float64)
    for r, row in enumerate(body):
        line = r + (2 if header is not None else 1)
        if len(row) != width:
            raise InvalidInputError(
                f"{option}: {file} line {line} has {len(row)} fields, expected {width}; "
                f"every row needs the same columns{hint}",
                param=option,
            )
        for c, cell in enumerate(row):
            try:
                values[r, c] = float(cell)
            except ValueError:
                name = header[c] if header is not None else str(c)
                raise InvalidInputError(
                    f"{option}: {file} line {line}, column {shorten(name)!r} holds "
                    f"{shorten(cell)!r}, not a number; "
                    + (hint[2:] if hint else "encode categories as numbers first"),
                    param=option,
                ) from None
    if column is None:
        return RawData(values, None, (file,))
    name = header[column] if header is not None else str(column)
    x = np.delete(values, column, axis=1)
    return RawData(x, values[:, column], (file,), label_column=name)


def _rows(file: Path, delimiter: str, option: str) -> list[list[str]]:
    try:
        with open(file, newline="", encoding="utf-8") as handle:
            return [row for row in csv.reader(handle, delimiter=delimiter) if row]
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"{option}: {file} is not UTF-8 text (byte {exc.start} cannot be decoded); save "
            "the CSV as UTF-8",
            param=option,
        ) from None
    except csv.Error as exc:
        raise InvalidInputError(
            f"{option}: {file} is not a readable CSV file ({shorten(str(exc))}); check that it "
            "is plain text with one example per line",
            param=option,
        ) from None


def _delimiter_hint(first: list[str], delimiter: str) -> str:
    """``"; looks like ';'-separated: …"`` when fields of the first row hold another
    separator, else ``""``."""
    line = "\0".join(first)
    counts = {d: line.count(d) for d in _OTHER_DELIMITERS if d != delimiter}
    best = max(counts, key=lambda d: counts[d])
    if counts[best] == 0:
        return ""
    shown = "tab" if best == "\t" else best
    return f"; looks like {shown!r}-separated: pass --csv-delimiter {shown!r}"


def _label_index(
    given: str | int | None,
    header: list[str] | None,
    width: int,
    file: Path,
    *,
    required: bool,
    hint: str = "",
) -> int | None:
    if given is None:
        if header is not None:
            lowered = [h.strip().lower() for h in header]
            for name in LABEL_COLUMN_NAMES:
                if name in lowered:
                    return lowered.index(name)
        return width - 1 if required else None
    if isinstance(given, str) and not given.lstrip("-").isdigit():
        names = [h.strip() for h in header] if header is not None else []
        if given in names:
            return names.index(given)
        shown = name_list(names, quote=False) if names else "none named: the file has no header"
        raise InvalidInputError(
            f"--label-column {shorten(given)!r} is not a column of {file} (columns: {shown}); "
            f"give a column name or a 0-based index{hint}",
            param="--label-column",
        )
    index = int(given)
    if not -width <= index < width:
        raise InvalidInputError(
            f"--label-column {index} is out of range for {file}, which has {width} columns",
            param="--label-column",
        )
    return index % width


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True
