"""Fixtures shared by the serving tests (tests/service, tests/http): one real digits model for the
whole session, trained in seconds and published into a temporary model repository.

The building blocks live in tests/service/service_testkit.py; pyproject's pytest ``pythonpath``
makes the testkits importable from every test folder.
"""

from __future__ import annotations

import pytest
from service_testkit import Digits, FixtureModel, build_fixture_model, load_digits_pngs


@pytest.fixture(scope="session")
def digits() -> Digits:
    return load_digits_pngs()


@pytest.fixture(scope="session")
def digits_model(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> FixtureModel:
    return build_fixture_model(digits, tmp_path_factory.mktemp("digits-model"))
