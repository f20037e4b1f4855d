"""The gRPC front end (``tta_serve.v1.Classifier``): ``server`` runs it, ``messages`` maps core
objects to protobuf.

``import grpc`` anywhere still means grpcio (and ``import http`` the standard library): these
packages are only ever imported as ``service.grpc`` and ``service.http``. That holds as long as
``service/`` itself is not on ``sys.path``, which is why modules here run as ``tta-serve`` or
``python -m service.cli``, never as ``python service/cli.py`` (that puts ``service/`` first on the
path, and ``service/grpc`` would shadow grpcio).
"""
