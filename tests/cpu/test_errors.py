"""Every error a spec can get: located at file:line:col on the offending text, with the
source line, a caret, and a fix; `flashgen check` exits 1 without a traceback."""
import pytest

from flashgen import SpecError
from flashgen.check.checker import check_source
from flashgen.cli import main

# (spec text, the line's text the caret must point into, the text under the caret,
#  words of the message, words of the fix)
CASES = [
    # --- parse errors
    ("attention a {\n  mask = q_idx >= kv_idx &&\n}", "}", "}", "unexpected '}'", "expected"),
    ("attention a {\n  mask = q_idx = kv_idx\n}", "  mask = q_idx = kv_idx", ("=", 2),
     "unexpected '='", "`==`"),
    ("attention a {\n  mask = 0 < q_idx < 5\n}", "  mask = 0 < q_idx < 5", ("<", 2),
     "unexpected '<'", "do not chain"),
    ("attention a {\n  mask = q_idx $ 2\n}", "  mask = q_idx $ 2", "$",
     "unexpected character '$'", "operators"),
    ("attention a {\n  mask = causal\n", "  mask = causal", None, "ends in the middle", "'}'"),
    ("attention a {\n  masks = causal\n}", "  masks = causal", "masks", "unexpected 'masks'",
     "did you mean 'mask'"),
    ("attention a {\n  mask = (q_idx > 1\n}", "}", "}", "unexpected '}'", "')'"),
    # --- names
    ("attention a {\n  mask = q_id >= kv_idx\n}", "  mask = q_id >= kv_idx", "q_id",
     "unknown name 'q_id'", "did you mean 'q_idx'"),
    ("attention a {\n  param slopes: f32[H]\n  score = score + slope[h]\n}",
     "  score = score + slope[h]", "slope", "unknown tensor 'slope'", "did you mean 'slopes'"),
    ("attention a {\n  score = score + tnah(score)\n}", "  score = score + tnah(score)", "tnah",
     "unknown function 'tnah'", "did you mean 'tanh'"),
    ("attention a {\n  mask = causl\n}", "  mask = causl", "causl", "unknown name 'causl'",
     "did you mean 'causal'"),
    ("attention a {\n  mask = score > 0\n}", "  mask = score > 0", "score",
     "'score' cannot be used in a mask", "-inf"),
    ("attention a {\n  param w: i32\n  mask = w[0] > 1\n}", "  mask = w[0] > 1", "w",
     "'w' is a scalar", "param w: i32[H]"),
    ("attention a {\n  param ids: i32[B, N]\n  mask = ids == 1\n}", "  mask = ids == 1", "ids",
     "'ids' is a tensor", "ids[b, q_idx]"),
    ("attention a {\n  param ids: i32[B, N]\n  mask = ids[b] == 1\n}", "  mask = ids[b] == 1",
     "ids[b]", "has 2 dim(s) [B, N] but is indexed with 1", "ids[b, q_idx]"),
    ("attention a {\n  param t: f32[H, 32]\n  score = score + t[h, 1.5]\n}",
     "  score = score + t[h, 1.5]", "1.5", "an index must be an int", "floor"),
    ("attention a {\n  param mask: i32\n}", "  param mask: i32", "mask", "reserved word", "rename"),
    ("attention a {\n  param exp: f32\n}", "  param exp: f32", "exp", "name of a function",
     "rename"),
    ("attention a {\n  param new: f32\n}", "  param new: f32", "new", "reserved in C++",
     "new_"),
    ("attention a {\n  param w: i32\n  param w: f32\n}", "  param w: f32", "w",
     "declared twice", "remove"),
    ("attention a {\n  param w: int32\n}", "  param w: int32", "int32", "unknown type 'int32'",
     "i32"),
    ("attention a {\n  param w: f32[H, 0]\n}", "  param w: f32[H, 0]", "0", "cannot be 0", ">= 1"),
    ("attention a {\n  param t: f32[H] = 1.0\n}", "  param t: f32[H] = 1.0", "1.0",
     "cannot have a default", "call time"),
    ("attention a {\n  param w: i32 = 1.5\n}", "  param w: i32 = 1.5", "1.5",
     "not a i32", "declared type"),
    ("attention a {\n  let d = score * 2.0\n}", "  let d = score * 2.0", "score",
     "cannot be used in a `let`", "score"),
    ("attention a {\n  mask = sliding_window(1, 2)\n}", "  mask = sliding_window(1, 2)",
     "sliding_window(1, 2)", "takes 1 argument(s), got 2", "sliding_window(w)"),
    ("attention a {\n  mask = document(q_idx)\n}", "  mask = document(q_idx)", "q_idx",
     "'q_idx' is not a tensor", "tensor parameter"),
    ("attention a {\n  mask = document(ids + 1)\n}", "  mask = document(ids + 1)", "ids + 1",
     "indexed like a tensor", "tensor parameter"),
    ("attention a {\n  mask = tanh\n}", "  mask = tanh", "tanh", "'tanh' is a function",
     "tanh(...)"),
    ("def f(x) = f(x)\nattention a {\n  mask = f(1) > 0\n}", "def f(x) = f(x)", ("f(x)", 2),
     "calls itself", "recursive"),
    ("def causal() = true\nattention a { }", "def causal() = true", "causal",
     "already a built-in", "another name"),
    # --- types
    ("attention a {\n  mask = q_idx + kv_idx\n}", "  mask = q_idx + kv_idx", "q_idx + kv_idx",
     "must be a condition (bool), got int", "q_idx >= kv_idx"),
    ("attention a {\n  score = score > 1.0\n}", "  score = score > 1.0", "score > 1.0",
     "must be a number", "mask"),
    ("attention a {\n  mask = causal && 1\n}", "  mask = causal && 1", "1", "expected bool, got int",
     "joins conditions"),
    ("attention a {\n  mask = (q_idx > 1) + 1 > 0\n}", "  mask = (q_idx > 1) + 1 > 0",
     "q_idx > 1", "'+' needs a number", "if cond then"),
    ("attention a {\n  mask = if q_idx then true else false\n}",
     "  mask = if q_idx then true else false", "q_idx", "expected bool, got int",
     "condition of `if`"),
    ("attention a {\n  score = if q_idx > 0 then score else true\n}",
     "  score = if q_idx > 0 then score else true", "if q_idx > 0 then score else true",
     "different types", "both numbers"),
    ("attention a {\n  score = score * abs(true)\n}", "  score = score * abs(true)", "abs(true)",
     "takes numbers, not bool", None),
    ("attention a {\n  mask = q_idx < 4294967296\n}", "  mask = q_idx < 4294967296",
     "4294967296", "does not fit in a 32-bit int", "4294967296.0"),
    # --- derivatives
    ("attention a {\n  score = floor(score) * 1.0\n}", "  score = floor(score) * 1.0",
     "floor(score)", "not differentiable", "floor"),
    ("attention a {\n  score = score % 2.0\n}", "  score = score % 2.0", "score % 2.0",
     "not differentiable", "%"),
    ("attention a {\n  param t: f32[H, 8]\n  score = t[h, floor(score)]\n}",
     "  score = t[h, floor(score)]", "t[h, floor(score)]", "not differentiable", "floor"),
    # --- settings
    ("attention a {\n  head_dim = 64, 80\n}", "  head_dim = 64, 80", "80",
     "head dim 80 is not supported", "16, 32, 64, 96, 128, 192, 256"),
    ("attention a {\n  value_dim = 100\n}", "  value_dim = 100", "100", "not supported", "128"),
    ("attention a {\n  dtype = float16\n}", "  dtype = float16", "float16",
     "unknown dtype 'float16'", "fp16"),
    ("attention a {\n  dtype = fp32\n}", "  dtype = fp32", "fp32", "unknown dtype", "fp16"),
    ("attention a {\n  mask = causal\n  dropout\n  dropout\n}", "  dropout", "dropout",
     "given twice", "line 3"),
    ("attention a {\n  scale = -1.0\n}", "  scale = -1.0", "-1.0", "positive finite", "sqrt"),
    ("attention a {\n  param c: f32\n  scale = c\n}", "  scale = c", ("c", 2),
     "runtime parameter, not a constant", "number"),
    ("attention a {\n  block_sparse = butterfy(block = 64)\n}",
     "  block_sparse = butterfy(block = 64)", "butterfy", "unknown block-sparse pattern",
     "did you mean 'butterfly'"),
    ("attention a {\n  block_sparse = butterfly(block = 48)\n}",
     "  block_sparse = butterfly(block = 48)", "block_sparse = butterfly(block = 48)",
     "not a power of two", "16, 32"),
    ("attention a {\n  block_sparse = strided(block = 64)\n}", "  block_sparse = strided(block = 64)",
     "block_sparse = strided(block = 64)", "needs 'stride'", "stride"),
    ("attention a {\n  block_sparse = bigbird(block = 64, windows = 2)\n}",
     "  block_sparse = bigbird(block = 64, windows = 2)", "windows", "has no argument 'windows'",
     "did you mean 'window'"),
    ("attention a {\n  block_sparse = butterfly()\n}", "  block_sparse = butterfly()",
     "block_sparse = butterfly()", "needs a block size", "block = 128"),
    ("attention a { }\nattention a { }", "attention a { }", ("a", 2), "defined twice", "line 1"),
    ("# nothing here\n", None, None, "no `attention NAME", "attention causal"),
]


def _located(text):
    with pytest.raises(SpecError) as info:
        check_source(text, "spec.attn")
    return info.value.first


@pytest.mark.parametrize("text,line_text,token,message,fix", CASES,
                         ids=[c[3][:40] for c in CASES])
def test_error_is_located_and_has_a_fix(text, line_text, token, message, fix):
    d = _located(text)
    assert message in d.message
    if fix is not None:
        assert d.fix and fix in d.fix, d.fix
    lines = text.split("\n")
    if line_text is None:
        return
    # the last line with this text (a repeated statement is reported where it repeats)
    line_no = max(i for i, t in enumerate(lines, 1) if t == line_text)
    assert d.span.line == line_no, d.format()
    if token is not None:
        token, nth = token if isinstance(token, tuple) else (token, 1)
        column = -1
        for _ in range(nth):
            column = line_text.index(token, column + 1)
        column += 1
        assert d.span.column == column, d.format()
        if d.span.end_line == d.span.line:
            assert d.span.end_column - d.span.column == len(token), d.format()
    report = d.format().splitlines()
    assert report[0].startswith(f"spec.attn:{d.span.line}:{d.span.column}: error: ")
    assert report[1].endswith(lines[d.span.line - 1])
    assert report[2].rstrip().endswith("^")
    assert report[-1].startswith("  fix: ") or fix is None


def test_errors_in_several_statements_are_all_reported():
    with pytest.raises(SpecError) as info:
        check_source("attention a {\n  mask = q_id > 1\n  score = score + tnah(score)\n}")
    assert [d.span.line for d in info.value.diagnostics] == [2, 3]


def test_errors_inside_builtin_helpers_point_at_the_call():
    d = _located("attention a {\n  mask = sliding_window(true)\n}")
    assert "in a built-in helper used here" in d.message and "needs a number" in d.message
    assert (d.span.line, d.span.column) == (2, 10)


WARNINGS = [
    ("attention a {\n  param w: i32\n  mask = causal\n}", 2, "never used"),
    ("attention a {\n  let d = 3\n  mask = causal\n}", 2, "never used"),
    ("attention a {\n  score = 1.0\n}", 2, "does not use `score`"),
    ("attention a {\n  mask = false\n}", 2, "hides every key"),
]


@pytest.mark.parametrize("text,line,message", WARNINGS)
def test_warnings(text, line, message):
    result = check_source(text)
    assert any(w.span.line == line and message in w.message for w in result.warnings)


def test_cli_check_exits_1_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.attn"
    bad.write_text("attention a {\n  param slopes: f32[H]\n  score = score + slope[h]\n}\n")
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:3:19: error: unknown tensor 'slope'" in err
    assert "Traceback" not in err and "^^^^^" in err and "did you mean 'slopes'" in err
    assert main(["check", "no_such_spec"]) == 1
    assert "Traceback" not in capsys.readouterr().err
