"""NVIDIA's tritonclient (grpc or http) against a tta-serve with TLS and tokens, in a child
process (tritonclient's protobuf messages cannot share a process with the server's copy:
tests/oip/triton_worker.py). Prints one JSON object: each step's outcome.

    python triton_tokens.py grpc|http HOST:PORT CA CERT KEY TOKEN_FILE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException


def _client(protocol: str, url: str, ca: str, cert: str, key: str) -> Any:
    if protocol == "grpc":
        import tritonclient.grpc as module

        return module, module.InferenceServerClient(
            url, ssl=True, root_certificates=ca, certificate_chain=cert, private_key=key)
    import tritonclient.http as module

    return module, module.InferenceServerClient(
        url, ssl=True, ssl_options={"ca_certs": ca, "certfile": cert, "keyfile": key})


def _outcome(call: Any) -> Any:
    try:
        return {"ok": call()}
    except InferenceServerException as e:
        return {"status": str(e.status()), "message": e.message()}


def main() -> int:
    protocol, url, ca, cert, key, token_file = sys.argv[1:7]
    token = Path(token_file).read_text().split()[0]
    module, client = _client(protocol, url, ca, cert, key)
    headers = {"authorization": f"Bearer {token}"}  # gRPC metadata keys are lower case
    image = Path(sys.argv[7]).read_bytes()
    tensor = module.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=object))

    def infer(with_headers: bool) -> Any:
        result = client.infer("digits", [tensor], headers=headers if with_headers else None)
        return int(np.argmax(result.as_numpy("probabilities")[0]))

    kwargs = {"as_json": True} if protocol == "grpc" else {}
    print(json.dumps({
        "ready_without_token": _outcome(client.is_server_ready),
        "infer_without_token": _outcome(lambda: infer(False)),
        "infer_with_token": _outcome(lambda: infer(True)),
        "metadata_with_token": _outcome(
            lambda: client.get_model_metadata("digits", headers=headers, **kwargs)["name"]),
        "index_with_infer_token": _outcome(
            lambda: client.get_model_repository_index(headers=headers, **kwargs)),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
