"""What the probes send: real digit images, a private model repository, and crafted files (images
whose headers declare huge sizes, gzip and zip bombs, truncated and zipped images).
"""

from __future__ import annotations

import io
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUNDLED_MODELS = ROOT / "models"


def digit_pngs(n: int = 64) -> list[bytes]:
    """Real handwritten digits (scikit-learn's set) as PNG files, as a client would send them."""
    from bench.common import digit_pngs as pngs

    return pngs(n)


def model_repository(workdir: Path) -> Path:
    """A private copy of the bundled model repository (digits v1 only): probes may publish."""
    repo = workdir / "models"
    shutil.copytree(BUNDLED_MODELS / "digits" / "1", repo / "digits" / "1")
    return repo


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (8-bit gray) and whose pixels are missing."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\0\0")) + _png_chunk(b"IEND", b""))


def gif_declaring(width: int, height: int) -> bytes:
    """A GIF whose screen and one frame declare width x height."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return screen + frame + b"\x02\x02\x44\x01\x00" + b";"


def tiff_declaring(width: int, height: int) -> bytes:
    """A 1x1 TIFF (Pillow's) with its ImageWidth/ImageLength tags rewritten."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    offset = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, offset)[0]):
        entry = offset + 2 + 12 * i
        tag = struct.unpack_from("<H", data, entry)[0]
        if tag in (256, 257):  # LONG, one value
            struct.pack_into("<HHII", data, entry, tag, 4, 1, width if tag == 256 else height)
    return bytes(data)


def gzip_bomb(size: int = 1 << 30) -> bytes:
    """``size`` zero bytes, gzip-compressed (~1 MB per GiB): one 16 MiB deflate block after a
    full flush is repeated, so building it costs a crc32, not a compression of ``size`` bytes."""
    block = 16 << 20
    assert size % block == 0
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = deflate.compress(bytes(block)) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.flush()
    crc = 0
    zeros = bytes(block)
    for _ in range(size // block):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + segment * (size // block) + tail + struct.pack("<II", crc, size & 0xFFFFFFFF)


def zip_bomb(entries: int = 64, entry_size: int = 17 * 10**6) -> bytes:
    """A zip of ``entries`` CLASS/image.png entries of ``entry_size`` zero bytes each (deflated:
    ~17 KB each); the entries share one compressed stream, so it is built in a second."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = deflate.compress(bytes(entry_size)) + deflate.flush()
    crc = zlib.crc32(bytes(entry_size))
    out, central = bytearray(), bytearray()
    for i in range(entries):
        name = f"{i % 10}/zeros-{i}.png".encode()
        offset = len(out)
        fields = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0x21, crc, len(data), entry_size)
        out += b"PK\x03\x04" + fields + struct.pack("<HH", len(name), 0) + name + data
        central += (b"PK\x01\x02" + struct.pack("<H", 20) + fields
                    + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, offset) + name)
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, entries, entries, len(central),
                                         len(out), 0)
    return bytes(out + central + end)


def truncated_png(images: list[bytes]) -> bytes:
    return images[0][: len(images[0]) // 2]


def zip_of(items: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in items.items():
            zf.writestr(name, data)
    return buf.getvalue()
