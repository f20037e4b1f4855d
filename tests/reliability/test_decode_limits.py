"""Images over Pillow's own decompression-bomb threshold are 'too large' (413 /
RESOURCE_EXHAUSTED naming --max-pixels), not 'undecodable' (400): the core's mapping, no server."""

from __future__ import annotations

import pytest

from bench.reliability.inputs import gif_declaring, png_declaring, tiff_declaring
from service.imaging import ImageTooLargeError, decode_image


@pytest.mark.parametrize("data", [png_declaring(40000, 40000), gif_declaring(65535, 65535),
                                  tiff_declaring(100000, 100000), png_declaring(8000, 8000)],
                         ids=["png-40000", "gif-65535", "tiff-100000", "png-8000"])
def test_over_the_pixel_limits_is_too_large(data: bytes):
    with pytest.raises(ImageTooLargeError, match="--max-pixels"):
        decode_image(data)
