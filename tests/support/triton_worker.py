"""Runs NVIDIA's tritonclient (grpc or http) in a child process for the tests, one call a line.

Why a child process: tritonclient.grpc's generated ``inference.*`` protobuf messages and the
server's own copy cannot live in one Python process (protobuf's default descriptor pool refuses
duplicate symbols; kserve/kserve#3099), and the tests serve in-process. Both protocols go through
here so every test reads the same for both wires.

    python triton_worker.py grpc|http HOST:PORT
    stdin:  {"op": "infer", "args": {...}}   one JSON object per line
    stdout: {"ok": result} | {"error": {"status": "...", "message": "..."}}
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException


def encode_array(array: np.ndarray) -> dict[str, Any]:
    if array.dtype == np.object_:  # BYTES: bytes, or str when they came as JSON strings
        elements = [e.encode() if isinstance(e, str) else bytes(e) for e in array.reshape(-1)]
        return {"shape": list(array.shape),
                "bytes": [base64.b64encode(e).decode() for e in elements]}
    return {"shape": list(array.shape), "dtype": array.dtype.str,
            "b64": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()}


def decode_array(d: dict[str, Any]) -> np.ndarray:
    if "bytes" in d:
        out = np.empty(len(d["bytes"]), dtype=object)
        out[:] = [base64.b64decode(e) for e in d["bytes"]]
        return out.reshape(d["shape"])
    return np.frombuffer(base64.b64decode(d["b64"]), dtype=d["dtype"]).reshape(d["shape"])


class Worker:
    def __init__(self, protocol: str, url: str) -> None:
        if protocol == "grpc":
            import tritonclient.grpc as client_module
        else:
            import tritonclient.http as client_module
        self.protocol = protocol
        self.url = url
        self.module = client_module
        self.client = client_module.InferenceServerClient(url)

    def metadata_kwargs(self) -> dict[str, Any]:
        return {"as_json": True} if self.protocol == "grpc" else {}

    def op_is_server_live(self) -> bool:
        return self.client.is_server_live()

    def op_is_server_ready(self) -> bool:
        return self.client.is_server_ready()

    def op_is_model_ready(self, name: str, version: str = "") -> bool:
        return self.client.is_model_ready(name, version)

    def op_get_server_metadata(self) -> dict:
        return self.client.get_server_metadata(**self.metadata_kwargs())

    def op_get_model_metadata(self, name: str, version: str = "") -> dict:
        return self.client.get_model_metadata(name, version, **self.metadata_kwargs())

    def op_get_model_config(self, name: str, version: str = "") -> dict:
        return self.client.get_model_config(name, version, **self.metadata_kwargs())

    def op_get_inference_statistics(self, name: str = "", version: str = "") -> dict:
        return self.client.get_inference_statistics(name, version, **self.metadata_kwargs())

    def op_get_model_repository_index(self) -> Any:
        return self.client.get_model_repository_index(**self.metadata_kwargs())

    def op_load_model(self, name: str) -> None:
        self.client.load_model(name)

    def op_unload_model(self, name: str) -> None:
        self.client.unload_model(name)

    def op_infer(self, model: str, inputs: list[dict], outputs: list[dict] | None = None,
                 version: str = "", parameters: dict | None = None, request_id: str = "",
                 binary_inputs: bool = True, **options: Any) -> dict:
        infer_inputs = []
        for spec in inputs:
            array = decode_array(spec["data"])
            infer_input = self.module.InferInput(spec["name"], list(array.shape),
                                                 spec["datatype"])
            if self.protocol == "http":
                infer_input.set_data_from_numpy(array, binary_data=binary_inputs)
            else:
                infer_input.set_data_from_numpy(array)
            infer_inputs.append(infer_input)
        requested = None
        if outputs:
            requested = [self.module.InferRequestedOutput(o["name"], **o.get("options", {}))
                         for o in outputs]
        result = self.client.infer(model, infer_inputs, model_version=version, outputs=requested,
                                   request_id=request_id, parameters=parameters, **options)
        if self.protocol == "grpc":
            response = result.get_response(as_json=True)
            response.pop("raw_output_contents", None)
        else:
            response = result.get_response()
        names = [o["name"] for o in response.get("outputs", [])]
        return {"response": response,
                "outputs": {name: encode_array(result.as_numpy(name)) for name in names}}

    def op_typed_infer(self, request: dict) -> dict:
        """gRPC only: a ModelInferRequest with typed contents (tritonclient always sends raw)."""
        import grpc
        from google.protobuf import json_format
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        message = json_format.ParseDict(request, service_pb2.ModelInferRequest())
        with grpc.insecure_channel(self.url) as channel:
            reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message)
        outputs = {}
        for tensor, raw in zip(reply.outputs, reply.raw_output_contents, strict=True):
            if tensor.datatype == "FP32":
                outputs[tensor.name] = encode_array(
                    np.frombuffer(raw, "<f4").reshape(list(tensor.shape)))
        return {"model_version": reply.model_version, "outputs": outputs}


def main() -> int:
    protocol, url = sys.argv[1], sys.argv[2]
    worker = Worker(protocol, url)
    for line in sys.stdin:
        call = json.loads(line)
        try:
            result = {"ok": getattr(worker, "op_" + call["op"])(**call.get("args", {}))}
        except InferenceServerException as e:
            result = {"error": {"status": str(e.status()), "message": e.message()}}
        except Exception as e:  # report, keep serving the next call
            result = {"error": {"status": "CLIENT", "message": f"{type(e).__name__}: {e}"}}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
