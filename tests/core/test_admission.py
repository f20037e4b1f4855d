"""The core's admission: the per-model queue bound, the process bound, and deadline refusals."""

import time

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
