"""The file suffixes read as images, one list for every reader of a folder or archive.

The client and ``tta-serve predict`` (which files of a folder to send), the HTTP front end (which
members of an uploaded archive to classify) and training's data sources (which files of a class
folder are images) all use it, so a folder reads the same everywhere. It names what
``service.imaging.decode_image`` reads, and lives in a module of its own so that its readers
load nothing else (no NumPy, no ONNX Runtime, no torch).
"""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
