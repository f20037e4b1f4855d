"""Image files on this machine, as the client and ``tta-serve predict`` send them.

Folder walks keep the image suffixes the server reads from a labelled set
(``service.image_suffixes.IMAGE_SUFFIXES``); a file named on its own is sent whatever its suffix.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from service.client.errors import UnreadableImage
from service.image_suffixes import IMAGE_SUFFIXES

ImageInput = str | Path | bytes


def read_image(image: ImageInput) -> bytes:
    """The encoded bytes of a path (or the bytes themselves); UnreadableImage names the file."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    try:
        return Path(image).read_bytes()
    except OSError as e:
        raise UnreadableImage(f"cannot read {image}: {e.strerror or e}") from e


def image_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given, and every image file under each folder (recursively, sorted, no hidden).

    A named file is yielded whatever its suffix (so a bad one is reported, not skipped); inside
    folders only image suffixes count, so a README beside the images is not an error.
    """
    for path in map(Path, paths):
        if path.is_dir():
            found = (p for p in path.rglob("*") if p.is_file()
                     and p.suffix.lower() in IMAGE_SUFFIXES
                     and not any(part.startswith(".") for part in p.relative_to(path).parts))
            yield from sorted(found)
        else:
            yield path


def labelled_files(root: str | Path) -> list[tuple[Path, str]]:
    """(path, class) for every image in ``root/CLASS/...`` (the ImageFolder layout), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of class folders (FOLDER/CLASS/image)")
    items = [(path, folder.name)
             for folder in sorted(p for p in root.iterdir()
                                  if p.is_dir() and not p.name.startswith("."))
             for path in image_files([folder])]
    if not items:
        raise FileNotFoundError(f"{root} holds no images in class folders (FOLDER/CLASS/image)")
    return items
