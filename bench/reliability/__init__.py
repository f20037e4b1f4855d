"""Reliability, probed from outside: the long forms of ``tests/reliability`` (which run the short
forms of the same functions in CI), printing figures.

    .venv/bin/python -m bench.reliability                 # everything, long forms
    .venv/bin/python -m bench.reliability sigterm soak    # some of it
    .venv/bin/python -m bench.reliability --quick         # the CI sizes

Every probe starts real ``tta-serve`` processes (``grpc``, ``http`` or ``all``) on 127.0.0.1
over a copy of the bundled model repository (``models/digits``) and sends real digit images:

- ``sigterm``: SIGTERM under load (16 clients), counting every request sent as answered,
  refused (gRPC UNAVAILABLE / HTTP 503 / connection refused: safe to retry) or lost (anything
  else: CANCELLED, a reset connection, a 5xx ...). The goal is 0 lost.
- ``soak``: RSS slope per 1,000 requests of each front end's serving process (least squares over
  samples taken after a warm-up). The goal is <= 0.2 MB per 1,000.
- ``bombs``: peak RSS growth of the serving process while it refuses a gzip bomb on
  ``/v2/models/digits/infer`` and a zip bomb on ``/evaluate``. The goal is <= 100 MB each.
- ``fuzz``: every route of both front ends and the Open Inference Protocol with bad inputs;
  each case names its expected status. The goal: 0 wrong statuses, 0 5xx, 0 hangs, the server
  answering a good request after each case.
- ``swap``: hot swap under load: new and broken versions published while clients predict.
- ``kill9``: ``training fit`` killed with SIGKILL, then ``--resume``: the final weights must be
  bit-identical to an uninterrupted run's.

One module a concern: ``sigterm``, ``memory`` (soak, peak RSS for the bombs), ``fuzz``, ``swap``
and ``kill9`` are the probes; ``inputs`` makes what they send, ``clients`` sorts each outcome
(answered, refused, lost), ``__main__`` is the command line. The servers are started by
``bench.serve_process``, which the tests share.
"""
