"""``tta-serve --workers N`` (service.workers): front-end worker processes over one inference
process. The link on its own (in this process: real cores, real ONNX Runtime, real shared
memory) and the whole thing with real worker processes serving real HTTP and gRPC."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from multiprocessing import Pipe

import grpc
import httpx
import numpy as np
import psutil
import pytest
from http_testkit import free_port
from service_testkit import FixtureModel, core_config

from service._proto.tta_serve.v1 import classifier_pb2 as pb
from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc
from service.core import InferenceCore, loading
from service.grpc.server import GrpcConfig
from service.http.server import HttpConfig
from service.workers.engine import EngineLink
from service.workers.supervisor import Supervisor
from service.workers.worker import RemoteGraph, WorkerLink

START_TIMEOUT_S = 240  # two BentoML workers starting on two busy cores


def test_one_pass_holds_blocks_from_several_workers(digits_model: FixtureModel):
    """Three workers' blocks reach one core; while a pass runs, the next two queue and share
    the next pass; each worker gets exactly its own rows' outputs, read via shared memory."""
    core = InferenceCore.create(core_config(digits_model.repo_root)).start()
    gate, first_pass = threading.Event(), threading.Event()
    try:
        with core.pin("digits") as pinned:
            batcher = pinned._model.batcher
            size = pinned.card.input_size
        forward = batcher._run

        def gated(x: np.ndarray) -> np.ndarray:
            if not first_pass.is_set():
                first_pass.set()
                assert gate.wait(60)
            return forward(x)

        batcher._run = gated
        links = []
        for i in range(3):
            ours, theirs = Pipe(duplex=True)
            links.append((EngineLink(core, ours, f"w{i}").start(), WorkerLink(theirs)))
        rng = np.random.default_rng(0)
        blocks = [rng.random((1 + i, 3, size, size), dtype=np.float32) for i in range(3)]
        answers: dict[int, np.ndarray] = {}

        def send(i: int) -> None:
            answers[i] = RemoteGraph(links[i][1], "digits", 1).run(blocks[i])

        threads = [threading.Thread(target=send, args=(0,))]
        threads[0].start()
        assert first_pass.wait(30)
        threads += [threading.Thread(target=send, args=(i,)) for i in (1, 2)]
        for t in threads[1:]:
            t.start()
        deadline = time.monotonic() + 30
        while batcher._queue.qsize() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        for t in threads:
            t.join(30)
        for i, block in enumerate(blocks):
            np.testing.assert_allclose(answers[i], forward(block), rtol=1e-5, atol=1e-6)
        # rows 1, then 2 + 3 in one pass (each link submits its rows as images)
        assert core.stats.batch_sizes("digits") == {1: 1, 5: 1}
        for engine, worker in links:
            worker.conn.close()
            engine.thread.join(10)
            worker.segments.close()
    finally:
        gate.set()
        core.stop()


def test_a_version_the_inference_process_does_not_serve_is_refused_by_name(
        digits_model: FixtureModel):
    core = InferenceCore.create(core_config(digits_model.repo_root)).start()
    ours, theirs = Pipe(duplex=True)
    EngineLink(core, ours, "w").start()
    link = WorkerLink(theirs)
    try:
        from service.core.errors import ModelNotFound, ModelUnavailable

        with pytest.raises(ModelNotFound, match="cats"):
            link.ask("open", "cats", 1)
        with pytest.raises(ModelUnavailable, match="version 7 is not served"):
            RemoteGraph(link, "digits", 7).run(np.zeros((1, 3, 8, 8), np.float32))
    finally:
        theirs.close()
        link.segments.close()
        core.stop()


# ---- real worker processes


class Served:
    def __init__(self, supervisor: Supervisor, grpc_port: int, http_port: int,
                 sessions: list[str]) -> None:
        self.supervisor, self.sessions = supervisor, sessions
        self.grpc_port, self.http_port = grpc_port, http_port
        self.url = f"http://127.0.0.1:{http_port}"

    def listening_pids(self) -> set[int]:
        pids = set()
        for w in self.supervisor.workers.values():
            try:
                conns = psutil.Process(w.process.pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == self.http_port
                   for c in conns) and any(c.status == psutil.CONN_LISTEN
                                          and c.laddr.port == self.grpc_port for c in conns):
                pids.add(w.process.pid)
        return pids

    def wait_all_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if len(self.listening_pids()) == len(self.supervisor.workers):
                return
            time.sleep(0.5)
        pytest.fail("the workers did not all come up")


@pytest.fixture(scope="module")
def served(digits_model: FixtureModel) -> Iterator[Served]:
    sessions: list[str] = []
    original = loading.create_session

    def counted(path, *args, **kwargs):
        sessions.append(str(path))
        return original(path, *args, **kwargs)

    loading.create_session = counted
    grpc_port, http_port = free_port(), free_port()
    supervisor = Supervisor(core_config(digits_model.repo_root),
                            GrpcConfig(host="127.0.0.1", port=grpc_port, grace_s=5),
                            HttpConfig(host="127.0.0.1", port=http_port, grace_s=5),
                            workers=2)
    try:
        supervisor.start()
        watcher = threading.Thread(target=supervisor.watch, daemon=True)
        watcher.start()
        running = Served(supervisor, grpc_port, http_port, sessions)
        running.wait_all_listening()
        yield running
    finally:
        loading.create_session = original
        if not supervisor._stopping.is_set():
            supervisor.stop(5)


def _predict_http(url: str, image: bytes) -> httpx.Response:
    with httpx.Client(timeout=60) as client:  # a fresh connection: any worker may take it
        return client.post(f"{url}/predict", files={"image": ("d.png", image)})


def test_workers_answer_both_wires_from_one_model_copy(served: Served,
                                                       digits_model: FixtureModel):
    before = sum(served.supervisor.core.stats.batch_sizes("digits").values())
    for image, label in digits_model.samples[:6]:
        response = _predict_http(served.url, image)
        assert response.status_code == 200, response.text
        assert response.json()["label"] == label
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        stub = pb_grpc.ClassifierStub(channel)
        for image, label in digits_model.samples[:4]:
            reply = stub.Predict(pb.PredictRequest(image=image), timeout=60)
            assert reply.classes[0].label == label
    # every forward pass ran here, in the inference process, on its one session per model
    engine = served.supervisor.core.stats.snapshot()["models"]["digits"]
    assert sum(k * v for k, v in engine["batch_sizes"].items()) >= 10
    assert sum(served.supervisor.core.stats.batch_sizes("digits").values()) > before
    assert len([s for s in served.sessions if "digits" in s]) == 1
    assert len(served.listening_pids()) == 2


def test_a_killed_worker_is_replaced_and_the_other_keeps_serving(served: Served,
                                                                 digits_model: FixtureModel):
    image, label = digits_model.samples[1]
    victim = served.supervisor.workers[0].process.pid
    os.kill(victim, signal.SIGKILL)
    answered = 0
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            response = _predict_http(served.url, image)
        except httpx.TransportError:  # a connection the dead worker had accepted
            continue
        assert response.status_code == 200 and response.json()["label"] == label
        answered += 1
        pids = served.listening_pids()
        if served.supervisor.restarts == 1 and len(pids) == 2 and victim not in pids:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the killed worker was not replaced")
    assert answered >= 1


def test_a_drain_answers_every_request_it_accepted(served: Served, digits_model: FixtureModel):
    """Load while the supervisor stops: every request is answered (200, or 503 shutting_down
    once draining), or refused before it was sent; none is lost. As in tests/reliability's
    SIGTERM check, a client stops at its first refusal (a load balancer takes the replica out)."""
    image, label = digits_model.samples[2]
    outcomes: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                try:
                    response = client.post(f"{served.url}/predict",
                                           files={"image": ("d.png", image)})
                except httpx.ConnectError:
                    outcomes.append("refused")
                    return
                except httpx.TransportError as e:
                    outcomes.append(f"lost: {e!r}")
                    continue
                if response.status_code == 200:
                    assert response.json()["label"] == label
                    outcomes.append("ok")
                else:
                    assert response.status_code == 503, response.text
                    assert response.json()["kind"] == "shutting_down"
                    outcomes.append("503")
                    return

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(2)
    assert served.supervisor.stop(5)  # every worker drained and exited 0
    stop.set()
    for t in threads:
        t.join(60)
    lost = [o for o in outcomes if o.startswith("lost")]
    assert outcomes.count("ok") > 0
    assert lost == []
