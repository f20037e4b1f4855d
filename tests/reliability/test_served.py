"""One ``tta-serve all`` (gRPC + HTTP + the OIP on both) probed from outside, as an attacker and
a careless client would: bad inputs on every route, bombs, a URL for a file, a soak, a hot swap,
and finally SIGTERM under load. The long forms: ``python -m bench.reliability``.

Tests run in file order on the module's server; the last one stops it.
"""

from __future__ import annotations

import contextlib
import socket

import pytest

from bench.reliability.fuzz import Case, fuzz_cases, mutation_cases, run_case, still_serving
from bench.reliability.memory import PeakRss, soak
from bench.reliability.sigterm import sigterm_under_load
from bench.reliability.swap import hot_swap_under_load
from bench.serve_process import ServeProcess

CASES = {c.name: c for c in fuzz_cases([b"placeholder"])}  # bombs are built when sent
BOMBS = [name for name, case in CASES.items()  # what the HTTP worker's peak RSS is measured on
         if case.wire == "http" and ("bomb" in name or "over the limit" in name)]
PLAIN = [name for name in CASES if name not in BOMBS]


def _case(name: str, images: list[bytes]) -> Case:
    return {c.name: c for c in fuzz_cases(images, bombs=name in BOMBS)}[name]


@pytest.mark.parametrize("name", PLAIN)
def test_bad_input_gets_its_status_and_the_server_goes_on(served: ServeProcess,
                                                          images: list[bytes], name: str):
    case = _case(name, images)
    outcome = run_case(served, case)
    assert outcome.ok, outcome
    assert still_serving(served, images[0], case.wire)


def test_damaged_images_are_4xx_never_5xx(served: ServeProcess, images: list[bytes]):
    outcomes = [run_case(served, case) for case in mutation_cases(images, 30)]
    assert [o for o in outcomes if not o.ok] == []
    assert still_serving(served, images[0])


@pytest.mark.parametrize("name", BOMBS)
def test_bombs_are_refused_within_100_mb(served: ServeProcess, images: list[bytes], name: str):
    """Before: a 1 GiB gzip bomb took the worker +2.1 GB, a zip of 64 x 17 MB +550 MB."""
    case = _case(name, images)
    with PeakRss(served.http_worker()) as peak:
        outcome = run_case(served, case)
    assert outcome.ok, outcome
    assert peak.growth_mb <= 100, f"{name}: peak RSS +{peak.growth_mb:.0f} MB"
    assert still_serving(served, images[0])


def test_a_url_sent_for_a_file_is_refused_and_never_fetched(served: ServeProcess):
    import httpx

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/digit.png"
        answers = [
            httpx.post(f"{served.http_url}/predict", data={"image": url}, timeout=30),
            httpx.post(f"{served.http_url}/predict_batch", data={"images": url}, timeout=30),
            httpx.post(f"{served.http_url}/evaluate", data={"archive": url}, timeout=30),
            httpx.post(f"{served.http_url}/predict", content=url.encode(),
                       headers={"content-type": "application/json"}, timeout=30),
        ]
        fetched = []
        with contextlib.suppress(TimeoutError):
            fetched.append(listener.accept())
    assert [(a.status_code, "never fetches URLs" in a.text) for a in answers] == [(400, True)] * 4
    assert fetched == [], "the server connected to the URL a client named"


def test_a_client_error_is_one_log_line(served: ServeProcess, images: list[bytes]):
    import httpx

    before = served.log
    r = httpx.post(f"{served.http_url}/predict", files={"image": ("a.png", images[0])},
                   data={"top_k": "abc"}, timeout=30)
    wrong_field = httpx.post(f"{served.http_url}/predict", files={"file": ("a.png", images[0])},
                             timeout=30)
    assert (r.status_code, wrong_field.status_code) == (400, 400)
    new = served.log[len(before):]
    assert "Traceback" not in new and "Exception on" not in new, new
    assert "/predict [POST] -> 400 top_k: Input should be a valid integer" in new, new
    assert "/predict [POST] -> 400 unexpected file field 'file'" in new, new


@pytest.mark.parametrize(("protocol", "route", "requests"), [("http", "/livez", 1200),
                                                             ("grpc", "Predict", 1000)])
def test_serving_memory_stays_flat(served: ServeProcess, protocol: str, route: str,
                                   requests: int):
    """Before: the HTTP worker grew ~4.6 MB per 1,000 requests of any route, /livez included
    (BentoML's timeout timers held each request for 600 s); gRPC was flat and must stay so.
    Short form; ``python -m bench.reliability soak`` prints the slopes over 24,000 requests."""
    result = soak(served, protocol, route, requests, warmup=200)
    assert result.slope_mb_per_1000 < 1.0, result.line()


def test_hot_swap_under_load_fails_no_request(served: ServeProcess):
    result = hot_swap_under_load(served, served.models_dir, clients=8, phase_s=1.5)
    assert result.failed == 0, (result.line(), result.failures[:5])
    assert result.versions.get(2, 0) > 0, result.line()  # v2 took over ...
    assert 3 not in result.versions  # ... and the broken v3 never served
    assert "refusing digits v3" in served.log  # one clear log line


def test_sigterm_under_load_loses_no_request(served: ServeProcess):
    """The default command, both wires at once. Runs last: it stops the module's server."""
    result = sigterm_under_load(served, clients=16, load_s=1.5)
    assert result.lost == 0, (result.line(), result.lost_examples, served.log[-3000:])
    assert result.answered > 16 and result.refused >= 1, result.line()
    assert result.exit_code == 0, served.log[-3000:]


def test_nothing_was_logged_as_a_crash(served: ServeProcess):
    """Over the whole module: no traceback in the server's log (a crash, not a client error)."""
    assert "Traceback" not in served.log, served.log[-5000:]
