"""Hypothesis: any text is either accepted or rejected with a located SpecError, never a
crash; and generated well-formed specs check, print and re-check to the same IR."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashgen import SpecError
from flashgen.check.checker import check_source
from flashgen.ir.pretty import format_spec

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
