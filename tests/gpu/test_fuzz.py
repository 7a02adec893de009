"""A fixed set of the differential fuzzer's random specs (tests/specgen.py), each compiled
and checked against its reference through the oracle (oracle.py), forward and backward.
The longer run of the same generator is tests/gpu/fuzz.py; its counts are in the
README's reliability section."""
import pytest

from ..specgen import random_case
from .fuzz import build_all, run_case

pytestmark = pytest.mark.gpu

SEEDS = range(50)


@pytest.fixture(scope="module")
def build_errors():
    return build_all([random_case(s) for s in SEEDS])


@pytest.mark.parametrize("seed", SEEDS)
def test_random_spec_matches_reference(seed, build_errors, monkeypatch):
    monkeypatch.setenv("FLASHGEN_POISON", "1")
    case = random_case(seed)
    assert seed not in build_errors, f"{case.text}\n{build_errors[seed]}"
    row = run_case(case)
    assert not row["failures"], f"{case.describe()}\n{case.text}\n" + "\n".join(row["failures"])
