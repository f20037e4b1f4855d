"""Labelled images listed in a CSV: ``path,label[,is_valid]``, with or without a header.

Only reads and checks the rows; the random split of rows without an is_valid column is the
caller's (training.data.sources), so folders and CSVs split the same way.
"""

from __future__ import annotations

import csv as csv_module
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from training.data.files import is_image
from training.errors import DataError

_PATH_COLUMNS = ("path", "file", "filename", "fname", "image", "image_id", "name")
_LABEL_COLUMNS = ("label", "class", "category", "target", "y")
_VALID_COLUMNS = ("is_valid", "is_val", "valid")
_TRUE = frozenset({"1", "true", "t", "yes", "y", "valid", "val"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "train", ""})
MAX_LISTED = 5  # how many offending files an error message names

Labelled = list[tuple[Path, str]]


@dataclass
class CsvRows:
    """The rows of a CSV: split by its is_valid column, or ``unsplit`` when it has none."""

    path: Path
    train: Labelled = field(default_factory=list)
    valid: Labelled = field(default_factory=list)
    unsplit: Labelled | None = None


@dataclass(frozen=True)
class _Layout:
    path_col: int
    label_col: int
    valid_col: int | None
    first_line: int  # 1-based line number of the first data row


def read_csv(root: Path, csv_path: Path) -> CsvRows:
    """Every row as (existing file, label); DataError naming the line or the missing files.

    Image paths are relative to the CSV's folder or to ``root``; a relative ``csv_path`` that
    is not found as given is looked for under ``root``.
    """
    if not csv_path.is_file() and not csv_path.is_absolute() and (root / csv_path).is_file():
        csv_path = root / csv_path
    if not csv_path.is_file():
        raise DataError(f"CSV file {csv_path} does not exist")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv_module.reader(f) if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"CSV file {csv_path} is empty")
    bases = [csv_path.parent, root]
    layout = _layout(rows, bases)
    out = CsvRows(csv_path, unsplit=[] if layout.valid_col is None else None)
    missing: list[str] = []
    body = rows[layout.first_line - 1:]
    for line, row in enumerate(body, start=layout.first_line):
        _add_row(out, row, line, layout, bases, missing)
    if missing:
        raise DataError(
            f"{csv_path} names {len(missing)} file(s) that do not exist (looked in "
            f"{csv_path.parent} and {root}): {', '.join(missing[:MAX_LISTED])}"
            + (" ..." if len(missing) > MAX_LISTED else "")
        )
    return out


def _layout(rows: list[list[str]], bases: Sequence[Path]) -> _Layout:
    """Which columns hold what. A first row whose first cell is neither an existing file nor an
    image name is a header; with a header only a column named is_valid (or is_val, valid)
    splits the rows, without one a third column does."""
    first = rows[0][0].strip()
    if resolve(first, bases) is None and not is_image(Path(first)):
        header = [c.strip().lower() for c in rows[0]]
        return _Layout(_column(header, _PATH_COLUMNS, 0), _column(header, _LABEL_COLUMNS, 1),
                       _column(header, _VALID_COLUMNS, None), 2)
    return _Layout(0, 1, 2 if len(rows[0]) > 2 else None, 1)


def _add_row(out: CsvRows, row: list[str], line: int, layout: _Layout,
             bases: Sequence[Path], missing: list[str]) -> None:
    needed = max(c for c in (layout.path_col, layout.label_col, layout.valid_col)
                 if c is not None)
    if len(row) <= needed:
        raise DataError(f"{out.path} line {line}: expected {needed + 1} columns, got {row}")
    name, label = row[layout.path_col].strip(), row[layout.label_col].strip()
    if not label:
        raise DataError(f"{out.path} line {line}: empty label for {name!r}")
    file = resolve(name, bases)
    if file is None:
        missing.append(name)
    elif out.unsplit is not None:
        out.unsplit.append((file, label))
    else:
        flag = row[layout.valid_col].strip().lower()
        if flag not in _TRUE | _FALSE:
            raise DataError(
                f"{out.path} line {line}: is_valid must be true/false (or 1/0), got {flag!r}"
            )
        (out.valid if flag in _TRUE else out.train).append((file, label))


def _column(header: list[str], names: tuple[str, ...], default: int | None) -> int | None:
    for n in names:
        if n in header:
            return header.index(n)
    return default


def resolve(name: str, bases: Sequence[Path]) -> Path | None:
    """The existing file ``name`` names: absolute, or under the first base that has it."""
    if not name:
        return None
    p = Path(name)
    if p.is_absolute():
        return p if p.is_file() else None
    for base in bases:
        if (base / p).is_file():
            return base / p
    return None
