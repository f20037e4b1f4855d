"""Open Inference Protocol (KServe v2) front ends: gRPC servicer and HTTP routes over one adapter.

``core_adapter`` holds the protocol's behaviour (inputs accepted, classification extension, TTA
switch, errors); ``grpc_servicer`` and ``http_routes`` only translate their wire into it.
"""
