"""The HTTP front end: the BentoML service (``service``), the ASGI server that runs it in
tta-serve's process (``server``), request bodies and response schema (``schema``, ``form_limits``),
the BentoML/uvicorn patches (``patches``, checked at start-up; their code in ``hardening``), the
SIGTERM drain (``drain``), and the pages (``web``, ``openapi``, ``ui/``).
``import http`` elsewhere still means the standard library: this package is ``service.http``."""
