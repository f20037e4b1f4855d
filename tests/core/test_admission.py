"""The core's admission: the per-model queue bound, the process bound, and deadline refusals."""

import contextlib
import contextvars
import time
from collections.abc import Iterator

import pytest

from service.core.admission import Admission
from service.core.errors import DeadlineExceeded, Overloaded


def test_a_full_model_queue_refuses_that_model_only():
    admission = Admission(max_pending=10, max_queue=2)
    with admission.admit("a"), admission.admit("a"):
        with pytest.raises(Overloaded, match="--max-queue"), admission.admit("a"):
            pass
        with admission.admit("b"):  # another model still gets in
            assert admission.queued("b") == 1 and admission.pending == 3
    assert admission.pending == 0 and admission.queued("a") == 0


def test_the_process_bound_holds_across_models():
    admission = Admission(max_pending=2, max_queue=0)  # 0: no per-model bound
    with admission.admit("a"), admission.admit("b"), \
            pytest.raises(Overloaded, match="--max-pending"), admission.admit("c"):
        pass


def test_a_request_that_could_only_be_answered_late_is_refused_while_others_queue():
    admission = Admission(max_pending=10, max_queue=10)
    with admission.admit("a"):
        time.sleep(0.2)  # answers of "a" take 0.2 s
    assert admission.latency_s("a") >= 0.2
    with admission.admit("a"):  # nothing queued: admitted whatever the estimate
        assert admission.queued("a") == 1
    with admission.admit("a"):
        late = time.monotonic() + 0.05
        with pytest.raises(DeadlineExceeded, match="not computed"), admission.admit("a", late):
            pass
        with admission.admit("a", deadline=time.monotonic() + 5):  # time enough: admitted
            assert admission.queued("a") == 2



@contextlib.contextmanager
def apart(admission: Admission, models: list[str], deadline: float | None = None
          ) -> Iterator[None]:
    """``admission.arrive`` in a context of its own, as another request's task has."""
    context, arrival = contextvars.Context(), admission.arrive(models, deadline)
    context.run(arrival.__enter__)
    try:
        yield
    finally:
        context.run(arrival.__exit__, None, None, None)


def test_requests_still_arriving_count_as_queued_until_admitted():
    admission = Admission(max_pending=10, max_queue=2)
    with admission.arrive(["a"]):
        assert admission.arriving() == 1
        with admission.admit("a"):  # it has arrived: queued, no longer arriving
            assert admission.arriving() == 0 and admission.queued("a") == 1
    with admission.admit("a"), apart(admission, ["a"]):  # one queued, one on its way: full
        with pytest.raises(Overloaded, match="--max-queue"), apart(admission, ["a"]):
            pass
        with apart(admission, ["a", "b"]):  # it may name "b", which has room
            pass
    with admission.arrive(["a"]), admission.arrive(["a"]):  # the same request, nested: once
        assert admission.arriving() == 1
    assert admission.arriving() == 0 and admission.pending == 0


def test_an_arrival_that_stalls_stops_holding_a_place(monkeypatch):
    monkeypatch.setattr("service.core.admission.ARRIVING_FOR_S", 0.1)
    admission = Admission(max_pending=10, max_queue=1)
    with apart(admission, ["a"]):  # a client that never sends its body
        with pytest.raises(Overloaded), apart(admission, ["a"]):
            pass
        time.sleep(0.15)
        with apart(admission, ["a"]):  # the stalled one no longer counts
            assert admission.arriving() == 1


def test_an_arrival_is_refused_when_its_deadline_is_out_of_reach():
    admission = Admission(max_pending=10, max_queue=10)
    with admission.arrive(["a"]), admission.admit("a"):
        time.sleep(0.2)  # arrival to answer: 0.2 s
    with admission.admit("a"):
        with pytest.raises(DeadlineExceeded, match="not computed"), \
                apart(admission, ["a"], time.monotonic() + 0.05):
            pass
        with apart(admission, ["a"], time.monotonic() + 5):
            assert admission.arriving() == 1
