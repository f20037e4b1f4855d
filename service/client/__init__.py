"""The Python client of tta-serve's gRPC API: ``from service.client import Client``.

``client`` holds ``Client``; its typed results (``results``), exceptions (``errors``) and file
helpers (``files``) have modules of their own, shared with ``tta-serve predict``. Nothing here
loads the inference core: the client needs only ``service.core.errors`` (the status names) and
the shared modules.
"""

# client.py's ``__all__`` is the public API (README shows it); one list, re-exported here.
from service.client.client import *  # noqa: F403
from service.client.client import __all__  # noqa: F401
