"""The one closed-loop load client every server is measured with (ours and the peers).

``concurrency`` workers each send a request, wait for its answer, and send the next, for
``warmup_s + duration_s`` seconds; requests that finish inside the measured window count (the
warm-up should be longer than one request's latency, so the window sees the steady state). It
runs in its own process (``python -m bench.loadgen ...`` prints one JSON line), so it shares no
GIL with the server, only the machine's cores -- on a 2-core box that is part of what a real
co-located client costs, and it is the same for every server compared.

gRPC: ``tta_serve.v1.Classifier/Predict`` over one grpc.aio channel (the plain grpcio peer speaks
the same contract). HTTP: aiohttp, one connection per worker, the encoded image sent as a
multipart file field (``--http-body multipart``) or as the raw request body (``raw``).
Open Inference Protocol (ours and KServe's server): ``oip-grpc`` (ModelInfer, raw BYTES) and
``oip-http`` (POST /v2/models/NAME/infer, binary extension or base64 JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import resource
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import IMAGE_SETS, images_for, latency_ms

Send = Callable[[bytes], Awaitable[None]]


async def _grpc_sender(target: str, tta: bool,
                       tta_mode: str = "") -> tuple[Send, Callable[[], Awaitable[None]]]:
    import grpc

    from service._proto.tta_serve.v1 import classifier_pb2 as pb
    from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc

    channel = grpc.aio.insecure_channel(target, options=[
        ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)])
    stub = pb_grpc.ClassifierStub(channel)

    mode = {"": pb.TTA_MODE_UNSPECIFIED, "off": pb.TTA_MODE_OFF, "on": pb.TTA_MODE_ON,
            "auto": pb.TTA_MODE_AUTO}[tta_mode]

    async def send(image: bytes) -> None:
        response = await stub.Predict(pb.PredictRequest(image=image, tta=tta, tta_mode=mode),
                                      timeout=60)
        if not response.classes:
            raise RuntimeError("empty response")

    return send, channel.close


def _oip_grpc_request(model: str, image: bytes, tta: bool, tta_mode: str = "") -> Any:
    from service._proto.inference import grpc_predict_v2_pb2 as oip

    request = oip.ModelInferRequest(
        model_name=model, inputs=[oip.ModelInferRequest.InferInputTensor(
            name="image", datatype="BYTES", shape=[1])],
        raw_input_contents=[struct.pack("<I", len(image)) + image])
    if tta_mode:
        request.parameters["tta"].string_param = tta_mode
    elif tta:
        request.parameters["tta"].bool_param = True
    return request


async def _oip_grpc_sender(target: str, model: str, tta: bool,
                           tta_mode: str = "") -> tuple[Send, Callable[[], Awaitable[None]]]:
    """Open Inference Protocol over gRPC: ModelInfer, one BYTES element in raw_input_contents
    (what tritonclient.grpc sends); the same message for every server that speaks it."""
    import grpc

    from service._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc

    channel = grpc.aio.insecure_channel(target, options=[
        ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)])
    stub = oip_grpc.GRPCInferenceServiceStub(channel)

    async def send(image: bytes) -> None:
        response = await stub.ModelInfer(_oip_grpc_request(model, image, tta, tta_mode),
                                        timeout=60)
        if not response.outputs:
            raise RuntimeError("empty response")

    return send, channel.close


async def _oip_http_sender(url: str, tta: bool, encoding: str, concurrency: int,
                           tta_mode: str = "") -> tuple[Send, Callable[[], Awaitable[None]]]:
    """Open Inference Protocol over HTTP: POST .../infer with one BYTES element, in Triton's
    binary tensor extension (``binary``: the raw file after the JSON header) or as a base64
    string in the JSON body (``base64``: how KServe's REST decoder takes an image, since it
    turns BYTES into UTF-8 text)."""
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, force_close=False),
        timeout=aiohttp.ClientTimeout(total=60))
    parameters: dict[str, Any] = {"tta": tta_mode} if tta_mode else {"tta": True} if tta else {}

    async def send(image: bytes) -> None:
        tensor: dict[str, Any] = {"name": "image", "shape": [1], "datatype": "BYTES"}
        if encoding == "base64":
            tensor["data"] = [base64.b64encode(image).decode("ascii")]
            request = session.post(url, json={"inputs": [tensor], "parameters": parameters})
        else:
            element = struct.pack("<I", len(image)) + image
            tensor["parameters"] = {"binary_data_size": len(element)}
            header = json.dumps({"inputs": [tensor], "parameters": parameters}).encode()
            request = session.post(url, data=header + element, headers={
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(header))})
        async with request as response:
            payload = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")

    return send, session.close


async def _http_sender(url: str, tta: bool, body: str, field: str, concurrency: int,
                       tta_mode: str = "") -> tuple[Send, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, force_close=False),
        timeout=aiohttp.ClientTimeout(total=60))
    params = {"tta": tta_mode} if tta_mode else {"tta": "true"} if tta else {}

    async def send(image: bytes) -> None:
        if body == "raw":
            request = session.post(url, data=image, params=params,
                                   headers={"Content-Type": "application/octet-stream"})
        else:
            form = aiohttp.FormData()
            form.add_field(field, image, filename="image", content_type="application/octet-stream")
            for name, value in params.items():
                form.add_field(name, value)
            request = session.post(url, data=form)
        async with request as response:
            payload = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")

    return send, session.close


async def run_load(send: Send, images: list[bytes], *, concurrency: int, duration_s: float,
                   warmup_s: float) -> dict[str, Any]:
    """Closed loop: returns counts, errors, latencies and throughput over the measured window."""
    start = time.perf_counter()
    window_start, window_end = start + warmup_s, start + warmup_s + duration_s
    latencies: list[float] = []
    errors: list[str] = []

    async def worker(offset: int) -> None:
        i = offset
        while True:
            t0 = time.perf_counter()
            if t0 >= window_end:
                return
            try:
                await send(images[i % len(images)])
            except Exception as e:  # counted and reported, never fatal to the run
                if len(errors) < 20:
                    errors.append(f"{type(e).__name__}: {e}"[:300])
                else:
                    errors.append("")
                await asyncio.sleep(0.01)
                continue
            finally:
                i += concurrency
            t1 = time.perf_counter()
            if window_start <= t1 <= window_end:
                latencies.append(t1 - t0)

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "error_samples": [e for e in errors if e][:5],
        "throughput": len(latencies) / duration_s,
        **latency_ms(latencies),
        "client_cpu_s_per_s": client_cpu / (time.perf_counter() - start),
    }


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    images = images_for(args.images, photos=args.photos)
    if args.protocol == "grpc":
        send, close = await _grpc_sender(args.target, args.tta, args.tta_mode)
    elif args.protocol == "oip-grpc":
        send, close = await _oip_grpc_sender(args.target, args.oip_model, args.tta,
                                             args.tta_mode)
    elif args.protocol == "oip-http":
        send, close = await _oip_http_sender(args.target, args.tta, args.oip_http_bytes,
                                             args.concurrency, args.tta_mode)
    else:
        send, close = await _http_sender(args.target, args.tta, args.http_body, args.http_field,
                                         args.concurrency, args.tta_mode)
    try:
        return await run_load(send, images, concurrency=args.concurrency,
                              duration_s=args.duration, warmup_s=args.warmup)
    finally:
        await close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("protocol", choices=["grpc", "http", "oip-grpc", "oip-http"])
    parser.add_argument("target", help="host:port (gRPC) or the predict/infer URL (HTTP)")
    parser.add_argument("--images", choices=IMAGE_SETS, default="digits",
                        help="which benchmark images to send (bench.common.images_for)")
    parser.add_argument("--photos", type=Path, default=None,
                        help="--images cifar10: a folder of class folders of photos instead "
                             "of the 100 held-out ones")
    parser.add_argument("--oip-model", default="cifar10", help="oip-grpc: the model name")
    parser.add_argument("--oip-http-bytes", choices=["binary", "base64"], default="binary",
                        help="oip-http: how the image travels (see _oip_http_sender)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--tta-mode", choices=["off", "on", "auto"], default="",
                        help="ask this mode on any wire (gRPC tta_mode, HTTP field/parameter "
                             "tta, OIP parameter tta); default unset: the model's default "
                             "(tta=auto for a calibrated model), or on with --tta")
    parser.add_argument("--http-body", choices=["multipart", "raw"], default="multipart")
    parser.add_argument("--http-field", default="image", help="multipart field of the image")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_main(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
