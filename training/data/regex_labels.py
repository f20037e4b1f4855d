"""Labels from file names by a regular expression, as fastai's ``RegexLabeller`` on the name
(seed 003's pets: ``'(.+)_\\d+.jpg$'`` makes ``great_pyrenees_173.jpg`` a ``great_pyrenees``).

Every image must match: a file that does not is a mistake in the pattern or a stray file, and
training on the rest would silently drop a class or part of one. The error lists them.
"""

from __future__ import annotations

import re
from pathlib import Path

from training.data.files import IMAGE_EXTENSIONS, image_files
from training.errors import DataError

Labelled = list[tuple[Path, str]]
MAX_LISTED = 10  # how many non-matching files the error names


def compile_label_regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise DataError(f"data.label_regex '{pattern}' is not a valid regular expression: {e}") \
            from e


def label_of(regex: re.Pattern[str], name: str) -> str | None:
    """The label ``regex`` finds in a file name (its first group, or the whole match when it has
    no group), None when it finds none."""
    m = regex.search(name)
    if m is None:
        return None
    label = m.group(1) if regex.groups else m.group(0)
    return label or None


def label_by_regex(root: Path, pattern: str) -> Labelled:
    """(path, label) for every image under ``root`` (recursively, sorted), labelled from its file
    name; DataError naming the files that do not match, with their count."""
    regex = compile_label_regex(pattern)
    files = image_files(root)
    if not files:
        raise DataError(f"{root} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    labelled, unmatched = [], []
    for f in files:
        label = label_of(regex, f.name)
        if label is None:
            unmatched.append(f)
        else:
            labelled.append((f, label))
    if unmatched:
        listed = ", ".join(str(f.relative_to(root)) for f in unmatched[:MAX_LISTED])
        more = f" and {len(unmatched) - MAX_LISTED} more" if len(unmatched) > MAX_LISTED else ""
        raise DataError(
            f"{len(unmatched)} of {len(files)} images under {root} do not match "
            f"data.label_regex '{pattern}' (the label is its first group, searched in the file "
            f"name): {listed}{more}; fix the pattern or move those files out")
    return labelled
