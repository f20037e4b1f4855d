"""Open Inference Protocol (KServe v2) front ends: gRPC servicer and HTTP routes over one adapter.

``messages`` holds the protocol's wire-free messages (tensors in both encodings, requests,
answers, ``OipError``); ``core_adapter`` its behaviour over the core (inputs accepted,
classification extension, TTA switch); ``grpc_servicer`` and ``http_routes`` only translate their
wire into them.
"""
