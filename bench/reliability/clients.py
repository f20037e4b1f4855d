"""Predict clients that classify each outcome: answered, refused (safe to retry) or lost."""

from __future__ import annotations

ANSWERED, REFUSED, LOST = "answered", "refused", "lost"


class GrpcPredictor:
    """Predict over one channel; outcome: answered / refused (UNAVAILABLE) / lost."""

    def __init__(self, target: str) -> None:
        import grpc

        from service._proto.tta_serve.v1 import classifier_pb2 as pb
        from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc

        self._grpc, self._pb = grpc, pb
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.ClassifierStub(self.channel)

    def __call__(self, image: bytes) -> tuple[str, str]:
        grpc = self._grpc
        try:
            reply = self.stub.Predict(self._pb.PredictRequest(image=image), timeout=60)
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                return REFUSED, f"UNAVAILABLE: {e.details()}"
            return LOST, f"{code.name}: {e.details()}"
        return (ANSWERED, "") if reply.classes else (LOST, "empty reply")

    def close(self) -> None:
        self.channel.close()


class HttpPredictor:
    """POST /predict (multipart) over one keep-alive connection; outcome as GrpcPredictor's.

    Refused: the connection was refused (nothing sent), or 503. Lost: the request was sent and
    no response came (reset or closed connection), or any other status.
    """

    def __init__(self, url: str) -> None:
        import httpx

        self._httpx = httpx
        self.client = httpx.Client(base_url=url, timeout=60)

    def __call__(self, image: bytes) -> tuple[str, str]:
        httpx = self._httpx
        try:
            r = self.client.post("/predict", files={"image": ("digit.png", image, "image/png")})
        except httpx.ConnectError as e:
            return REFUSED, f"connect: {e}"
        except httpx.HTTPError as e:
            return LOST, f"{type(e).__name__}: {e}"
        if r.status_code == 200:
            return ANSWERED, ""
        if r.status_code == 503:
            return REFUSED, "503"
        return LOST, f"{r.status_code}: {r.text[:200]}"

    def close(self) -> None:
        self.client.close()
