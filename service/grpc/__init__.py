"""The gRPC front end (``tta_serve.v1.Classifier``): ``server`` runs it, ``messages`` maps core
objects to protobuf. ``import grpc`` elsewhere still means grpcio: this package is only ever
imported as ``service.grpc``."""
