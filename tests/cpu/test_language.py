"""Parsing and checking: round trips, precedence, semantics of operators and helpers."""
import math

import pytest
import torch

import flashgen
from flashgen.check.checker import check_source
from flashgen.ir import nodes as ir
from flashgen.ir.interpret import evaluate
from flashgen.ir.pretty import format_spec, pretty
from flashgen.ir.types import Type


def spec_of(body: str, params: str = "") -> ir.AttentionSpec:
    return check_source(f"attention t {{\n head_dim = 64\n {params}\n {body}\n}}").specs[0]


@pytest.mark.parametrize("name", sorted(flashgen.shipped()))
def test_shipped_specs_round_trip_through_the_printer(name):
    spec = flashgen.load(name)
    again = check_source(format_spec(spec)).specs[0]
    assert again == spec


@pytest.mark.parametrize("text", [
    "q_idx - kv_idx - 1 < 3",
    "q_idx - (kv_idx - 1) < 3",
    "!(q_idx < 3) || kv_idx > 2 && b == 0",
    "(q_idx < 3 || kv_idx > 2) && b == 0",
    "-q_idx * 2 // 3 % 5 >= -(kv_idx + 1)",
    "if q_idx > 3 then true else kv_idx == 0",
    "(if q_idx > 3 then 1 else 2) + 1 == kv_idx",
])
def test_mask_expressions_round_trip(text):
    spec = spec_of(f"mask = {text}")
    assert spec_of(f"mask = {pretty(spec.mask)}").mask == spec.mask


def _value(text, **env):
    spec = spec_of(f"let x = {text}\n mask = x == x")
    return evaluate(spec.let("x").expr, {"b": 0, "h": 0, "q_idx": 0, "kv_idx": 0, "q_len": 1,
                                         "kv_len": 1, **env})


@pytest.mark.parametrize("text,value", [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("7 // 2", 3), ("-7 // 2", -4), ("-7 % 3", 2),
    ("7 % -3", -2), ("7 // 0", 0), ("7 % 0", 0), ("7 / 2", 3.5), ("2 - 3 - 4", -5),
    ("floor(-2.5)", -3), ("ceil(2.1)", 3), ("min(3, 4.5)", 3.0), ("abs(-3)", 3),
    ("2147483647 + 1", -2**31), ("if 1 < 2 then 10 else 20", 10), ("clamp(9, 0, 5)", 5),
    ("floor(1e20)", 2**31 - 1), ("floor(0.0 / 0.0)", 0), ("log(0.0)", -math.inf),
    ("max(1.0, 0.0 / 0.0)", "nan"),
])
def test_operator_semantics(text, value):
    got = _value(text)
    if value == "nan":
        assert math.isnan(got)
    else:
        assert got == value and type(got) is type(value)


def test_types_promote_and_are_recorded():
    spec = spec_of("score = score + q_idx")
    assert spec.score.type is Type.FLOAT
    assert isinstance(spec.score.right, ir.ToFloat)


def test_several_masks_and_scores_compose():
    spec = spec_of("mask = causal\n mask = kv_idx > 2\n score = score * 2.0\n score = score + 1.0")
    assert pretty(spec.mask) == "q_idx >= kv_idx && kv_idx > 2"
    assert pretty(spec.score) == "score * 2.0 + 1.0"
    assert pretty(spec.score_derivative) == "2.0"


def test_lets_are_named_and_ordered():
    spec = spec_of("let d = q_idx - kv_idx\n let w = d * 2\n mask = w < 10")
    assert [let.name for let in spec.lets] == ["d", "w"]
    assert isinstance(spec.mask.left, ir.Local)


def test_user_defs_are_expanded_and_may_call_builtins():
    text = """
def near(w) = causal && q_idx - kv_idx < w
attention a { head_dim = 64
  mask = near(4) }
attention b { head_dim = 64
  mask = near(8) || kv_idx == 0 }
"""
    a, b = check_source(text).specs
    assert pretty(a.mask) == "q_idx >= kv_idx && q_idx - kv_idx < 4"
    assert b.name == "b"


def test_builtins_expand_to_their_definitions():
    assert pretty(spec_of("mask = sliding_window(16)").mask) == \
        "q_idx >= kv_idx && q_idx - kv_idx < 16"
    assert pretty(spec_of("mask = document(ids)", "param ids: i32[B, N]").mask) == \
        "ids[b, q_idx] == ids[b, kv_idx]"
    assert pretty(spec_of("score = softcap(20.0)").score) == "20.0 * tanh(score / 20.0)"


def test_t5_bucket_matches_the_t5_formula():
    """The T5 relative-position bucket, written here from the T5 code's definition."""
    def t5(relative_position, bidirectional, num_buckets=32, max_distance=128):
        ret = 0
        n = -relative_position
        if bidirectional:
            num_buckets //= 2
            ret += (n < 0) * num_buckets
            n = abs(n)
        else:
            n = max(n, 0)
        max_exact = num_buckets // 2
        if n < max_exact:
            return ret + n
        large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                                * (num_buckets - max_exact))
        return ret + min(large, num_buckets - 1)

    enc = spec_of("let x = t5_bucket(32, 128)\n mask = x == x").let("x").expr
    dec = spec_of("let x = t5_bucket_causal(32, 128)\n mask = x == x").let("x").expr
    for q in range(0, 300, 7):
        for k in range(0, 300, 5):
            env = {"q_idx": q, "kv_idx": k}
            assert evaluate(enc, env) == t5(k - q, True), (q, k)
            assert evaluate(dec, env) == t5(k - q, False), (q, k)


def test_defaults_scale_and_dims():
    spec = check_source("""attention a {
      head_dim = 128
      value_dim = 64
      dtype = bf16
      scale = 1 / sqrt(64)
      param w: i32 = 3
      param c: f32 = 2
      mask = q_idx - kv_idx < w
      score = score * c
    }""").specs[0]
    assert spec.head_dims == (128,) and spec.value_dim == 64 and spec.dtypes == ("bf16",)
    assert spec.scale == 0.125 and spec.param("w").default == 3 and spec.param("c").default == 2.0


def test_symbolic_derivative_matches_autograd():
    spec = check_source("""attention a {
      param s: f32[H]
      param t: f32[H]
      score = if score > 0.5 then sigmoid(score) * s[h] else pow(abs(score) + 1.0, 1.5) - exp(score / 3)
      score = 10.0 * tanh(score / 10.0) + sqrt(score * score + 1.0) / t[h] + min(score, 0.2) + clamp(score, -1.0, 1.0)
    }""").specs[0]
    from flashgen.reference.attention import grid_variables
    from flashgen.reference.evaluate import Evaluator
    x = torch.randn(1, 2, 5, 7, dtype=torch.float64) * 3
    x.requires_grad_(True)
    params = {"s": torch.rand(2, dtype=torch.float64), "t": torch.rand(2, dtype=torch.float64) + 0.5}
    variables = dict(grid_variables(1, 2, 5, 7, "cpu"), score=x)
    y = Evaluator(spec, variables, params, torch.float64, "cpu")(spec.score)
    (grad,) = torch.autograd.grad(y.sum(), x)
    variables["score"] = x.detach()
    symbolic = Evaluator(spec, variables, params, torch.float64, "cpu")(spec.score_derivative)
    torch.testing.assert_close(symbolic.expand_as(grad), grad)


def test_several_blocks_need_a_name():
    text = "attention a { mask = causal }\nattention b { }"
    with pytest.raises(flashgen.SpecNotFound, match="pick one"):
        flashgen.compile(text)
    assert flashgen.compile(text, name="b").spec.name == "b"
    with pytest.raises(flashgen.SpecNotFound, match="did you mean 'b'"):
        flashgen.compile(text, name="bb")


def test_compile_from_path_text_and_name(tmp_path):
    path = tmp_path / "mine.attn"
    path.write_text("attention mine { mask = causal }")
    assert flashgen.compile(path).spec.name == "mine"
    assert flashgen.compile(str(path)).spec.name == "mine"
    assert flashgen.compile("attention x { }").spec.name == "x"
    assert flashgen.compile("alibi").spec.name == "alibi"
    with pytest.raises(flashgen.SpecNotFound, match="did you mean 'alibi'"):
        flashgen.compile("alibbi")


@pytest.mark.parametrize("score", [
    "score + slopes[h] * (kv_idx - q_idx)",                       # ALiBi
    "score - slopes[h] * (q_idx - kv_idx) / 2.0 + 0.5",
    "slopes[h] * (2 * kv_idx + q_idx) + score - 0.01 * (q_idx * q_idx)",
    "score + (if h > 0 then slopes[h] else 1.5) * (kv_idx - 3) + bias[h, q_idx % 4]",
    "score + bias[h, q_idx % 4]",                                 # no growth along a row
])
def test_affine_bias_matches_the_score(score):
    """analysis/affine.py: score = score + E, E(kv) = E(kv0) + step * (kv - kv0) exactly."""
    from flashgen.analysis.affine import affine_bias
    from flashgen.reference.attention import grid_variables
    from flashgen.reference.evaluate import Evaluator
    spec = spec_of(f"score = {score}", "param slopes: f32[H]\n param bias: f32[H, 4]")
    affine = affine_bias(spec)
    assert affine is not None
    x = torch.randn(1, 2, 5, 7, dtype=torch.float64)
    params = {"slopes": torch.rand(2, dtype=torch.float64), "bias": torch.rand(2, 4, dtype=torch.float64)}
    variables = dict(grid_variables(1, 2, 5, 7, "cpu"), score=x)
    run = Evaluator(spec, variables, params, torch.float64, "cpu")
    kv = torch.arange(7, dtype=torch.float64)
    rebuilt = x + run(affine.bias)[..., :1] + run(affine.step) * kv
    torch.testing.assert_close(rebuilt, run(spec.score).expand_as(x))


@pytest.mark.parametrize("score, along_q", [
    ("score + slopes[h] * (kv_idx - q_idx)", True),                      # ALiBi
    ("score - slopes[h] * (q_idx - kv_idx) / 2.0 + 0.5", True),
    ("score + slopes[h] * kv_idx * q_idx", True),                        # a step by key
    ("score + (if kv_idx > 3 then 1.0 else 2.0) * 0.0 + slopes[h] * kv_idx", None),
    ("slopes[h] * (2 * kv_idx + q_idx) + score - 0.01 * (q_idx * q_idx)", False),  # quadratic
    ("score + (if h > 0 then slopes[h] else 1.5) * (kv_idx - 3) + bias[h, q_idx % 4]", False),
])
def test_affine_bias_along_query_rows(score, along_q):
    """The bias's step along q_idx (the sm90 backward's S^T walks query columns), where it
    is affine in q_idx too: E(q) = E(q0) + q_step * (q - q0) exactly; None where not."""
    from flashgen.analysis.affine import affine_bias
    from flashgen.reference.attention import grid_variables
    from flashgen.reference.evaluate import Evaluator
    spec = spec_of(f"score = {score}", "param slopes: f32[H]\n param bias: f32[H, 4]")
    affine = affine_bias(spec)
    if along_q is None:   # not affine in kv_idx: no bias at all
        assert affine is None
        return
    assert (affine.q_step is not None) == along_q
    if not along_q:
        return
    x = torch.randn(1, 2, 5, 7, dtype=torch.float64)
    params = {"slopes": torch.rand(2, dtype=torch.float64), "bias": torch.rand(2, 4, dtype=torch.float64)}
    variables = dict(grid_variables(1, 2, 5, 7, "cpu"), score=x)
    run = Evaluator(spec, variables, params, torch.float64, "cpu")
    q = torch.arange(5, dtype=torch.float64).unsqueeze(-1)
    rebuilt = x + run(affine.bias)[..., :1, :] + run(affine.q_step) * q
    torch.testing.assert_close(rebuilt, run(spec.score).expand_as(x))


@pytest.mark.parametrize("score", [
    "score * 2.0 + slopes[h] * kv_idx",          # not score + E
    "score + slopes[h] * (kv_idx // 2)",         # integer division
    "score + slopes[h] * kv_idx * kv_idx",       # quadratic
    "score + bias[h, kv_idx % 4]",               # a table read per key
    "score + tanh(0.1 * kv_idx)",
    "score + 1.5",                               # a constant cancels: nothing to do
])
def test_affine_bias_refuses_what_is_not(score):
    from flashgen.analysis.affine import affine_bias
    spec = spec_of(f"score = {score}", "param slopes: f32[H]\n param bias: f32[H, 4]")
    assert affine_bias(spec) is None


def test_shipped_affine_biases():
    from flashgen.analysis.affine import affine_bias
    found = {name for name in flashgen.shipped() if affine_bias(flashgen.load(name))}
    assert found == {"alibi"}
