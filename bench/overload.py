"""Overload (issue 27): goodput when offered twice the capacity, with client deadlines.

    .venv/bin/python -m bench.overload                                  # this checkout
    .venv/bin/python -m bench.overload --before /tmp/before --rounds 2  # + another, interleaved

Each round starts the default command (``tta-serve``: gRPC and HTTP over one core) from each
checkout (its ``service`` package, this interpreter) on a private copy of the bundled digits
model, and for each load -- ``grpc`` (``Predict``), ``http`` (``POST /predict``, multipart)
and ``both`` (the two wires at once, half the rate each) -- with TTA on every request:

1. capacity: closed loop, ``--concurrency`` clients per wire, each sending its next request
   when its answer arrives, for ``--capacity-s`` seconds (after a warm-up): answers per second,
   measured before the storm and again after it (the shared box's load drifts; the reference
   capacity is the mean of the two, both are recorded);
2. normal latency: ``--probes`` lone requests one after another (median);
3. the storm: open loop, requests sent at ``--factor`` x capacity (evenly spaced, whatever
   the answers do) for ``--storm-s`` seconds, each with a ``--deadline-ms`` client deadline
   (gRPC: the call's timeout; HTTP: the client gives up and closes the connection, and sends
   ``X-Request-Timeout``, which the code before this issue ignores). Goodput = answers that
   arrived inside their deadline, per second, over the storm;
4. after it: the server's RSS (against before the storm), and the lone-request latency again,
   1 s after the storm ended.

Goal (issue 27): gRPC goodput >= 0.9 x the capacity measured in the same run. The client runs
in this process (one asyncio loop: grpc.aio and aiohttp), on the same cores as the server, as
in the outside probe that filed the issue; ``uptime``'s load is recorded with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import describe_machine, digit_pngs, machine, write_results
from bench.serve_process import ServeProcess, http_ready

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 240
LOADS = ("grpc", "http", "both")
Send = Callable[[bytes, float], Awaitable[str]]  # (image, timeout_s) -> outcome ("ok", ...)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Server(ServeProcess):
    """The default command from ``checkout`` (its ``service`` package, this interpreter) on
    ``models_dir``, both wires on free ports, no repository polling; flags appended as given."""

    def __init__(self, checkout: Path, models_dir: Path, workdir: Path,
                 flags: list[str]) -> None:
        super().__init__("all", models_dir, workdir, flags=("--poll-interval-s", "0", *flags),
                         grace_s=None, tuning=(), env={"PYTHONPATH": str(checkout)},
                         cwd=checkout, name_kind=False)

    @property
    def rss_mb(self) -> float:
        return self.serving_rss_mb("http")

    def ready(self) -> bool:
        """HTTP /readyz answers 200 (every checkout compared has it)."""
        return http_ready(self.http_url)

    def stop(self) -> int:
        """SIGTERM and the exit code; -9 when it had to be killed."""
        try:
            return self.terminate(60)
        except subprocess.TimeoutExpired:
            return -9


class Clients:
    """One grpc.aio channel and one aiohttp session to a server; ``send(wire)`` per request."""

    def __init__(self, server: Server) -> None:
        self.server = server

    async def __aenter__(self) -> Clients:
        import aiohttp
        import grpc

        from service._proto.tta_serve.v1 import classifier_pb2 as pb
        from service._proto.tta_serve.v1 import classifier_pb2_grpc as pb_grpc

        self._grpc, self._pb = grpc, pb
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.server.grpc_port}")
        self.stub = pb_grpc.ClassifierStub(self.channel)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024))
        self.url = f"http://127.0.0.1:{self.server.http_port}/predict"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        await self.channel.close()

    async def grpc(self, image: bytes, timeout_s: float) -> str:
        try:
            response = await self.stub.Predict(self._pb.PredictRequest(image=image, tta=True),
                                               timeout=timeout_s)
        except self._grpc.RpcError as e:
            return e.code().name
        return "ok" if response.classes else "empty"

    async def http(self, image: bytes, timeout_s: float) -> str:
        import aiohttp

        form = aiohttp.FormData()
        form.add_field("image", image, filename="d.png", content_type="image/png")
        form.add_field("tta", "true")
        try:
            async with self.session.post(
                    self.url, data=form, headers={"X-Request-Timeout": f"{timeout_s:g}"},
                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                await response.read()
                return "ok" if response.status == 200 else f"HTTP {response.status}"
        except TimeoutError:
            return "client timeout"
        except aiohttp.ClientError as e:
            return type(e).__name__

    def senders(self, load: str) -> list[Send]:
        return [self.grpc, self.http] if load == "both" else [getattr(self, load)]


async def closed_loop(senders: list[Send], images: list[bytes], concurrency: int,
                      seconds: float, warmup_s: float = 2.0) -> float:
    """Answers per second with ``concurrency`` clients per sender, after a warm-up."""
    start = time.monotonic()
    window = (start + warmup_s, start + warmup_s + seconds)
    answered = 0

    async def client(send: Send, k: int) -> None:
        nonlocal answered
        i = k
        while time.monotonic() < window[1]:
            outcome = await send(images[i % len(images)], 60.0)
            i += concurrency
            if outcome == "ok" and window[0] <= time.monotonic() <= window[1]:
                answered += 1

    await asyncio.gather(*(client(s, k) for s in senders for k in range(concurrency)))
    return answered / seconds


async def lone_latency_ms(send: Send, images: list[bytes], n: int) -> float:
    """Median of ``n`` requests sent one after another (nothing else in flight)."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        outcome = await send(images[i % len(images)], 5.0)
        if outcome == "ok":
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times) if times else float("nan")


async def open_loop(senders: list[Send], images: list[bytes], rate: float, seconds: float,
                    deadline_s: float) -> dict[str, Any]:
    """Requests sent every 1/rate s (round robin over the senders) regardless of answers."""
    outcomes: Counter[str] = Counter()
    in_time = 0
    tasks: set[asyncio.Task] = set()

    async def one(send: Send, image: bytes) -> None:
        nonlocal in_time
        t0 = time.monotonic()
        outcome = await send(image, deadline_s)
        outcomes[outcome] += 1
        if outcome == "ok" and time.monotonic() - t0 <= deadline_s:
            in_time += 1

    lags: list[float] = []

    async def heartbeat() -> None:
        """The client's own event-loop lag: how late a 10 ms sleep wakes up. Past the deadline,
        the client itself, not the server, makes the answers late."""
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - t0 - 0.01)

    beat = asyncio.create_task(heartbeat())
    start = time.monotonic()
    sent = 0
    while (now := time.monotonic()) < start + seconds:
        due = int((now - start) * rate) + 1
        while sent < due:
            task = asyncio.create_task(one(senders[sent % len(senders)],
                                           images[sent % len(images)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(max(0.0, start + due / rate - time.monotonic()))
    beat.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=deadline_s + 10)
    lag_ms = sorted(x * 1000 for x in lags) or [float("nan")]
    return {"sent": sent, "offered_per_s": sent / seconds, "goodput_per_s": in_time / seconds,
            "outcomes": dict(outcomes.most_common()),
            "client_loop_lag_ms_p50": lag_ms[len(lag_ms) // 2],
            "client_loop_lag_ms_p95": lag_ms[int(len(lag_ms) * 0.95)]}


def server_counts(server: Server) -> Counter[str]:
    """The server's own count of requests by outcome and of dropped ones (/metrics)."""
    import httpx

    counts: Counter[str] = Counter()
    try:
        text = httpx.get(f"http://127.0.0.1:{server.http_port}/metrics", timeout=30).text
    except httpx.HTTPError:  # a swamped server may not answer: a finding, not a crash
        counts["/metrics unanswered in 30 s"] = 1
        return counts
    for line in text.splitlines():
        for family, label in (("tta_serve_requests_total", "outcome"),
                              ("tta_serve_dropped_requests_total", "reason")):
            if line.startswith(family + "{") and f'{label}="' in line:
                value = line.split(f'{label}="', 1)[1].split('"', 1)[0]
                prefix = "dropped " if label == "reason" else ""
                counts[prefix + value] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def _storm_process(ports: tuple[int, int], load: str, rate: float, seconds: float,
                   deadline_s: float, start_at: float) -> dict[str, Any]:
    """One client process's share of the storm, from ``start_at`` (time.time())."""
    server = argparse.Namespace(grpc_port=ports[0], http_port=ports[1])
    images = digit_pngs(64)

    async def run() -> dict[str, Any]:
        async with Clients(server) as clients:  # type: ignore[arg-type]
            await asyncio.sleep(max(0.0, start_at - time.time()))
            return await open_loop(clients.senders(load), images, rate, seconds, deadline_s)

    return asyncio.run(run())


def run_storm(server: Server, load: str, rate: float,
              args: argparse.Namespace) -> dict[str, Any]:
    """The open-loop storm from ``--client-processes`` processes, rate/N each, summed: one
    Python client cannot send 1,000 calls/s on this box (its loop lags by seconds)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    n = args.client_processes
    start_at = time.time() + 5.0  # every process started and connected
    with ProcessPoolExecutor(n, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_storm_process, (server.grpc_port, server.http_port), load,
                               rate / n, args.storm_s, args.deadline_ms / 1000, start_at)
                   for _ in range(n)]
        parts = [future.result() for future in futures]
    outcomes: Counter[str] = Counter()
    for part in parts:
        outcomes.update(part["outcomes"])
    return {"sent": sum(p["sent"] for p in parts),
            "offered_per_s": sum(p["offered_per_s"] for p in parts),
            "goodput_per_s": sum(p["goodput_per_s"] for p in parts),
            "outcomes": dict(outcomes.most_common()), "client_processes": n,
            "client_loop_lag_ms_p50": max(p["client_loop_lag_ms_p50"] for p in parts),
            "client_loop_lag_ms_p95": max(p["client_loop_lag_ms_p95"] for p in parts)}


async def measure_load(server: Server, load: str, images: list[bytes],
                       args: argparse.Namespace) -> dict[str, Any]:
    async with Clients(server) as clients:
        senders = clients.senders(load)
        capacity = await closed_loop(senders, images, args.concurrency, args.capacity_s)
        load_at_capacity = load_average()
        normal_ms = await lone_latency_ms(senders[0], images, args.probes)
        rss_before = server.rss_mb
        counts_before = server_counts(server)
        storm = await asyncio.to_thread(run_storm, server, load, args.factor * capacity, args)
        load_after_storm = load_average()
        storm["server_counts"] = dict(server_counts(server) - counts_before)
        await asyncio.sleep(1.0)
        after_ms = await lone_latency_ms(senders[0], images, args.probes)
        rss_after = server.rss_mb
        # The shared box's load drifts: capacity again after the storm, and the mean of the two
        # as the reference (both recorded).
        capacity_after = await closed_loop(senders, images, args.concurrency, args.capacity_s)
    reference = (capacity + capacity_after) / 2
    return {"load": load, "capacity_per_s": reference, "capacity_before_storm": capacity,
            "capacity_after_storm": capacity_after, **storm,
            "offered_x_capacity": storm["offered_per_s"] / reference if reference else 0.0,
            "goodput_x_capacity": storm["goodput_per_s"] / reference if reference else 0.0,
            "lone_ms_before": normal_ms, "lone_ms_after": after_ms,
            "rss_mb_before": rss_before, "rss_mb_after": rss_after,
            "load_avg_at_capacity": load_at_capacity, "load_avg_after_storm": load_after_storm}


def measure(checkout: Path, label: str, round_: int, args: argparse.Namespace) -> list[dict]:
    images = digit_pngs(64)
    rows = []
    with tempfile.TemporaryDirectory(prefix="overload-") as workdir:
        models = Path(workdir) / "models"
        shutil.copytree(ROOT / "models" / "digits" / "1", models / "digits" / "1")
        server = Server(checkout, models, Path(workdir), args.flags)
        try:
            server.wait_ready()
            for load in args.loads:
                row = asyncio.run(measure_load(server, load, images, args))
                row.update(checkout=label, round=round_)
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            code = server.stop()
            if code != 0:
                print(f"{label}: the server exited {code}; log "
                      f"{server.log_path.read_text()[-2000:]}", file=sys.stderr)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per checkout and load: the medians over rounds."""
    out = []
    for label in dict.fromkeys(r["checkout"] for r in rows):
        for load in dict.fromkeys(r["load"] for r in rows):
            mine = [r for r in rows if r["checkout"] == label and r["load"] == load]
            if not mine:
                continue
            out.append({"checkout": label, "load": load, "rounds": len(mine), **{
                key: statistics.median(r[key] for r in mine) for key in (
                    "capacity_per_s", "offered_per_s", "offered_x_capacity", "goodput_per_s",
                    "goodput_x_capacity",
                    "lone_ms_before", "lone_ms_after", "rss_mb_before", "rss_mb_after")}})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="a checkout to measure too, interleaved")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="(default: this one)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--loads", nargs="+", choices=LOADS, default=list(LOADS))
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients/wire")
    parser.add_argument("--capacity-s", type=float, default=5.0)
    parser.add_argument("--storm-s", type=float, default=20.0)
    parser.add_argument("--factor", type=float, default=2.0, help="offered load / capacity")
    parser.add_argument("--deadline-ms", type=float, default=250.0)
    parser.add_argument("--probes", type=int, default=20, help="lone requests before/after")
    parser.add_argument("--client-processes", type=int, default=2,
                        help="processes sending the storm (rate/N each)")
    parser.add_argument("--flags", nargs=argparse.REMAINDER, default=[],
                        help="server flags (the rest of the line), for both checkouts")
    args = parser.parse_args(argv)
    info = machine()
    print(describe_machine(info), flush=True)
    checkouts = [("after", args.checkout)] + ([("before", args.before)] if args.before else [])
    rows: list[dict] = []
    path = None
    for round_ in range(1, args.rounds + 1):
        order = checkouts if round_ % 2 else checkouts[::-1]  # interleaved, alternating first
        for label, checkout in order:
            rows += measure(checkout, label, round_, args)
            path = save(info, args, rows, path)  # what is measured so far survives a crash
    for row in summary(rows):
        print(json.dumps(row))
    print(f"wrote {path}")
    return 0


def save(info: dict, args: argparse.Namespace, rows: list[dict], path: Path | None) -> Path:
    """The results so far, to bench/results/overload-<time>.json (one file per run)."""
    payload = {"machine": info, "load_avg_at_end": load_average(), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": summary(rows), "runs": rows}
    if path is None:
        return write_results("overload", payload)
    text = json.dumps(payload, indent=2, default=str) + "\n"
    path.write_text(text)
    (path.parent / "overload-latest.json").write_text(text)
    return path


if __name__ == "__main__":
    sys.exit(main())
