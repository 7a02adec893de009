"""Fuzzing the front end and the fuzzer's specs, on the CPU.

Hypothesis: any text is either accepted or rejected with a located SpecError, never a
crash; and generated well-formed specs check, print and re-check to the same IR. The
differential fuzzer's random specs (tests/specgen.py): every one checks, its reference
agrees with the element-by-element oracle, its host-compiled mask and tile classes are
exact and sound, and a few compile for the GPU (their kernels against the reference:
tests/gpu/test_fuzz.py and the longer tests/gpu/fuzz.py)."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flashgen
from flashgen import SpecError
from flashgen.check.checker import check_source
from flashgen.ir.pretty import format_spec
from flashgen.runtime.examples import example_inputs, example_params

from ..specgen import random_case
from . import naive
from .test_tile_class import B as TILE_B
from .test_tile_class import H as TILE_H
from .test_tile_class import N as TILE_N
from .test_tile_class import (check_index_ranges, check_rendered_mask, check_tile_classes,
                              check_walks)

ALPHABET = st.sampled_from(list("attention mask score param let def if then else {}()[],=:+-*/%<>!&|#.0123456789_ \n")
                           + ["q_idx", "kv_idx", "causal", "f32", "H", "tanh", "&&", "||", "==",
                              "//", "block_sparse", "butterfly", "dropout", "head_dim", "inf"])


def _check_never_crashes(text):
    try:
        check_source(text, "fuzz.attn")
    except SpecError as err:
        for d in err.diagnostics:
            assert d.span.line >= 1 and d.span.column >= 1
            assert d.format().startswith(f"fuzz.attn:{d.span.line}:{d.span.column}: error: ")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ALPHABET, max_size=40).map("".join))
def test_random_token_soup(text):
    _check_never_crashes(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_random_unicode_inside_a_block(text):
    _check_never_crashes("attention a {\n  mask = " + text + "\n}")


# ---- well-formed specs from the grammar

INT_ATOMS = st.sampled_from(["q_idx", "kv_idx", "b", "h", "q_len", "kv_len", "w", "ids[b, q_idx]"]) | \
    st.integers(-50, 50).map(str)
FLOAT_ATOMS = st.sampled_from(["score", "c", "slopes[h]", "0.5", "2.0", "1e-3"])


def _ints(depth):
    if depth == 0:
        return INT_ATOMS
    sub = _ints(depth - 1)
    return st.one_of(sub, st.tuples(sub, st.sampled_from(["+", "-", "*", "//", "%"]), sub)
                     .map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
                     st.tuples(sub, sub).map(lambda t: f"min({t[0]}, {t[1]})"),
                     sub.map(lambda a: f"abs({a})"))


def _floats(depth):
    if depth == 0:
        return FLOAT_ATOMS
    sub = _floats(depth - 1)
    return st.one_of(sub, st.tuples(sub, st.sampled_from(["+", "-", "*", "/"]), sub)
                     .map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
                     st.tuples(st.sampled_from(["tanh", "exp", "sigmoid", "abs"]), sub)
                     .map(lambda t: f"{t[0]}({t[1]})"),
                     st.tuples(_bools(0), sub, sub).map(lambda t: f"(if {t[0]} then {t[1]} else {t[2]})"))


def _bools(depth):
    cmp = st.tuples(_ints(1), st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), _ints(1)) \
        .map(lambda t: f"{t[0]} {t[1]} {t[2]}")
    if depth == 0:
        return cmp | st.sampled_from(["causal", "true"])
    sub = _bools(depth - 1)
    return st.one_of(cmp, st.tuples(sub, st.sampled_from(["&&", "||"]), sub)
                     .map(lambda t: f"({t[0]} {t[1]} {t[2]})"), sub.map(lambda a: f"!({a})"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bools(2), _floats(2))
def test_generated_specs_check_and_round_trip(mask, score):
    text = (f"attention g {{\n  head_dim = 64\n  param w: i32\n  param c: f32\n"
            f"  param slopes: f32[H]\n  param ids: i32[B, N]\n  mask = {mask}\n  score = {score}\n}}")
    spec = check_source(text).specs[0]
    assert check_source(format_spec(spec)).specs[0] == spec


# ---- the differential fuzzer's specs (tests/specgen.py)



def test_fuzz_specs_are_valid_and_varied():
    """500 seeds: every spec checks and prints back to itself; the features all occur."""
    seen = {"mask": 0, "score": 0, "dropout": 0, "block_sparse": 0, "tables": 0, "lets": 0}
    for seed in range(500):
        spec = check_source(random_case(seed).text, "fuzz.attn").specs[0]
        assert check_source(format_spec(spec)).specs[0] == spec, random_case(seed).text
        seen["mask"] += spec.mask is not None
        seen["score"] += spec.score is not None
        seen["dropout"] += spec.dropout
        seen["block_sparse"] += spec.block_sparse is not None
        seen["tables"] += any(p.is_tensor for p in spec.params)
        seen["lets"] += bool(spec.lets)
    assert all(n >= 25 for n in seen.values()), seen


def _small_shape(case):
    spec = flashgen.compile(case.text).spec
    n = 140 if spec.block_sparse is not None else 12
    square = any(d.symbol == "N" for p in spec.params if p.is_tensor for d in p.shape)
    return spec, {"B": case.B, "Hq": 2 * case.Hkv, "Hkv": case.Hkv, "Nq": n, "Nk": n if square else n + 3}


@pytest.mark.parametrize("seed", range(24))
def test_fuzz_reference_matches_naive(seed):
    case = random_case(seed)
    spec, shape = _small_shape(case)
    op = flashgen.compile(case.text)
    q, k, v, params, layout = example_inputs(spec, generator=torch.Generator().manual_seed(seed),
                                             head_dim=16 if 16 in spec.head_dims else None,
                                             **shape)
    extra = {"dropout_p": 0.3, "seed": seed} if spec.dropout else {}
    out, lse = op.reference(q, k, v, return_lse=True, layout=layout, **extra, **params)
    want_out, want_lse = naive.attention(spec, q, k, v, layout=layout, **extra, **params)
    torch.testing.assert_close(out, torch.tensor(want_out, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lse, torch.tensor(want_lse, dtype=torch.float64), rtol=1e-9, atol=1e-9)


MASKED_SEEDS = [s for s in range(200) if flashgen.compile(random_case(s).text).spec.mask is not None][:20]


@pytest.fixture(scope="module")
def host_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLASHGEN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.mark.nvcc
@pytest.mark.parametrize("seed", MASKED_SEEDS)
def test_fuzz_masks_render_exactly_classify_and_bound_soundly(seed, host_cache):
    spec = flashgen.compile(random_case(seed).text).spec
    params = example_params(spec, TILE_B, TILE_H, TILE_N, TILE_N,
                            torch.Generator().manual_seed(seed), with_defaults=True)
    check_rendered_mask(spec, params)
    check_tile_classes(spec, params, spec.name)
    check_index_ranges(spec, params, spec.name)
    check_walks(spec, params, spec.name, exact=False)


@pytest.mark.nvcc
@pytest.mark.parametrize("seed", range(4))
def test_fuzz_kernels_compile(seed, host_cache):
    """Forward and backward of a few generated specs through nvcc and ptxas (sm_90a)."""
    from flashgen.build.cache import ptxas_report
    from flashgen.render.kernels import render_module
    case = random_case(seed)
    spec = flashgen.compile(case.text).spec
    report = ptxas_report(render_module(spec, "fuzz.attn", case.dtype, case.head_dim), "sm_90a")
    assert any("forward_kernel" in k for k in report) and any("backward_kernel" in k for k in report)
