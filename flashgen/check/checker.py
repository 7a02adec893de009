"""Syntax tree -> checked IR: names, types, shapes, helpers, derivatives.

Every problem becomes a located Diagnostic with a fix. Errors in one statement do
not hide errors in the next: each statement is checked on its own."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from .. import resources
from ..analysis.derivative import NotDifferentiable, derivative, depends_on, is_score
from ..ir import nodes as ir
from ..ir.functions import FUNCTIONS
from ..ir.interpret import NotConstant, evaluate
from ..ir.types import DTYPES, HEAD_DIMS, PARAM_TYPES, Type
from ..spec import ast
from ..spec.errors import Reporter, Source, Span, did_you_mean
from ..spec.parse import parse

# Symbols a tensor dim may name that bind to the call's shapes.
SHAPE_SYMBOLS = ("B", "H", "Hkv", "Nq", "Nk", "N")
KEYWORDS = {"attention", "def", "head_dim", "value_dim", "dtype", "scale", "param", "let",
            "mask", "score", "dropout", "block_sparse", "if", "then", "else", "true", "false",
            "inf"}
INT32_MAX = 2**31 - 1
# Parameter names become C++ struct members: these would not compile.
CPP_KEYWORDS = set("""alignas alignof and and_eq asm auto bitand bitor bool break case catch char
char8_t char16_t char32_t class compl concept const consteval constexpr constinit const_cast
continue co_await co_return co_yield decltype default delete do double dynamic_cast else enum
explicit export extern false float for friend goto if inline int long mutable namespace new
noexcept not not_eq nullptr operator or or_eq private protected public register
reinterpret_cast requires return short signed sizeof static static_assert static_cast struct
switch template this thread_local throw true try typedef typeid typename union unsigned using
virtual void volatile wchar_t while xor xor_eq""".split())

# Block-sparse patterns and their options (name -> default; None = required).
PATTERNS = {
    "layout": {},
    "butterfly": {},
    "bigbird": {"window": 1, "global": 1, "random": 1, "seed": 0},
    "strided": {"stride": None},
}
PATTERN_HELP = {
    "layout": "a runtime bool tensor `layout` [H or 1, ceil(Nq/block_q), ceil(Nk/block_k)]",
    "butterfly": "blocks (i, j) with i == j or i XOR j a power of two",
    "bigbird": "a band of `window` blocks each side, `global` first rows/columns, "
               "`random` random blocks per row (from `seed`)",
    "strided": "blocks with |i - j| < stride or (i - j) % stride == 0",
}


class _Abort(Exception):
    """Stops checking the current statement after an error was reported."""


@dataclass(frozen=True)
class _Def:
    node: ast.Definition
    source: Source
    builtin: bool


@dataclass
class _Scope:
    context: str                          # "mask", "score", "let", "constant"
    bindings: dict = field(default_factory=dict)   # def parameter -> (ast arg, caller scope)
    in_def: bool = False                  # lexical: inside a def body, attention names are hidden
    site: Span | None = None              # errors inside a built-in's body are reported here
    stack: tuple[str, ...] = ()           # defs being expanded (recursion check)


@functools.cache
def prelude() -> tuple[ast.Definition, ...]:
    path = resources.prelude_path()
    return parse(path.read_text(), str(path)).definitions


class Checker:
    def __init__(self, module: ast.Module):
        self.module = module
        self.source = module.source
        self.report = Reporter(module.source)
        self.defs: dict[str, _Def] = {}
        prelude_source = Source(resources.prelude_path().read_text(), "<builtins>")
        for d in prelude():
            self.defs[d.name.text] = _Def(d, prelude_source, True)
        for d in module.definitions:
            self._declare_def(d)
        # per attention
        self.params: dict[str, ir.ParamDecl] = {}
        self.lets: dict[str, ir.LetDef] = {}

    # ------------------------------------------------------------ helpers

    def _fail(self, span: Span, message: str, fix: str | None = None, scope: _Scope | None = None):
        if scope is not None and scope.site is not None:
            message = f"in a built-in helper used here: {message}"
            span = scope.site
        self.report.error(span, message, fix)
        raise _Abort

    def _declare_def(self, d: ast.Definition) -> None:
        name = d.name.text
        if name in FUNCTIONS or (name in self.defs and self.defs[name].builtin):
            self.report.error(d.name.span, f"'{name}' is already a built-in",
                              "give your helper another name")
        elif name in self.defs:
            self.report.error(d.name.span, f"'{name}' is defined twice", "remove or rename one")
        elif name in KEYWORDS or name in ir.INDEX_VARS or name == "score":
            self.report.error(d.name.span, f"'{name}' is a reserved word", "rename the helper")
        else:
            seen = set()
            for p in d.params:
                if p.text in seen:
                    self.report.error(p.span, f"parameter '{p.text}' appears twice",
                                      "rename one of them")
                seen.add(p.text)
            self.defs[name] = _Def(d, self.source, False)

    def _visible_names(self, scope: _Scope) -> list[str]:
        names = list(ir.INDEX_VARS) + list(scope.bindings) + list(self.defs) + list(FUNCTIONS)
        if scope.context == "score":
            names.append("score")
        if not scope.in_def:
            names += list(self.params) + list(self.lets)
        return names

    # ------------------------------------------------------------ expressions

    def expr(self, node: ast.Expr, scope: _Scope) -> ir.Expr:
        span = scope.site or node.span
        if isinstance(node, ast.IntLit):
            if node.value > INT32_MAX:
                self._fail(node.span, f"{node.value} does not fit in a 32-bit int",
                           f"write it as a float: {node.value}.0", scope)
            return ir.Const(node.value, type=Type.INT, span=span)
        if isinstance(node, ast.FloatLit):
            return ir.Const(node.value, type=Type.FLOAT, span=span)
        if isinstance(node, ast.BoolLit):
            return ir.Const(node.value, type=Type.BOOL, span=span)
        if isinstance(node, ast.Name):
            return self._name(node, scope)
        if isinstance(node, ast.Index):
            return self._index(node, scope)
        if isinstance(node, ast.Call):
            return self._call(node, scope)
        if isinstance(node, ast.Unary):
            x = self.expr(node.operand, scope)
            if node.op == "!":
                self._expect(x, Type.BOOL, node.operand, scope, "'!' negates a condition")
                return ir.Unary("not", x, type=Type.BOOL, span=span)
            self._expect_numeric(x, node.operand, scope, "'-'")
            return ir.Unary("neg", x, type=x.type, span=span)
        if isinstance(node, ast.Binary):
            return self._binary(node, scope)
        if isinstance(node, ast.IfThenElse):
            c = self.expr(node.condition, scope)
            self._expect(c, Type.BOOL, node.condition, scope,
                         "the condition of `if` must be true/false, e.g. `q_idx >= kv_idx`")
            a, b = self.expr(node.then, scope), self.expr(node.otherwise, scope)
            a, b, t = self._unify(a, b, node, scope, "the two branches of `if`")
            return ir.Select(c, a, b, type=t, span=span)
        raise TypeError(node)

    def _expect(self, e: ir.Expr, t: Type, node, scope, why: str) -> None:
        if e.type is not t:
            self._fail(node.span, f"expected {t}, got {e.type}", why, scope)

    def _expect_numeric(self, e: ir.Expr, node, scope, op: str) -> None:
        if not e.type.numeric:
            self._fail(node.span, f"{op} needs a number, got bool",
                       "use `if cond then 1.0 else 0.0` to turn a condition into a number", scope)

    def _unify(self, a: ir.Expr, b: ir.Expr, node, scope, what: str):
        if a.type is b.type:
            return a, b, a.type
        if a.type.numeric and b.type.numeric:
            return _as_float(a), _as_float(b), Type.FLOAT
        self._fail(node.span, f"{what} have different types ({a.type} and {b.type})",
                   "make both numbers or both conditions", scope)

    def _binary(self, node: ast.Binary, scope: _Scope) -> ir.Expr:
        span = scope.site or node.span
        a, b = self.expr(node.left, scope), self.expr(node.right, scope)
        op = node.op
        if op in ir.LOGICAL:
            for x, n in ((a, node.left), (b, node.right)):
                self._expect(x, Type.BOOL, n, scope,
                             f"'{op}' joins conditions; compare numbers first, e.g. `x > 0`")
            return ir.Binary(ir.LOGICAL[op], a, b, type=Type.BOOL, span=span)
        if op in ir.COMPARISON:
            if op in ("==", "!=") and a.type is Type.BOOL and b.type is Type.BOOL:
                return ir.Binary(ir.COMPARISON[op], a, b, type=Type.BOOL, span=span)
            for x, n in ((a, node.left), (b, node.right)):
                self._expect_numeric(x, n, scope, f"'{op}'")
            a, b, _ = self._unify(a, b, node, scope, "the two sides")
            return ir.Binary(ir.COMPARISON[op], a, b, type=Type.BOOL, span=span)
        for x, n in ((a, node.left), (b, node.right)):
            self._expect_numeric(x, n, scope, f"'{op}'")
        if op == "/":
            return ir.Binary("div", _as_float(a), _as_float(b), type=Type.FLOAT, span=span)
        a, b, t = self._unify(a, b, node, scope, "the two sides")
        return ir.Binary(ir.ARITHMETIC[op], a, b, type=t, span=span)

    def _name(self, node: ast.Name, scope: _Scope) -> ir.Expr:
        name, span = node.id, scope.site or node.span
        if name in scope.bindings:
            arg, caller = scope.bindings[name]
            return self.expr(arg, caller)
        if name in ir.INDEX_VARS:
            return ir.Var(name, type=ir.INDEX_VARS[name], span=span)
        if name == "score":
            if scope.context == "score":
                return ir.Var("score", type=Type.FLOAT, span=span)
            where = {"mask": "a mask", "let": "a `let`", "constant": "a constant"}[scope.context]
            self._fail(node.span, f"'score' cannot be used in {where}",
                       "`score` exists only in `score = ...`; to drop a pair by its score write "
                       "`score = if <cond> then -inf else score`", scope)
        if not scope.in_def:
            if name in self.params:
                p = self.params[name]
                if scope.context == "constant":
                    self._fail(node.span, f"'{name}' is a runtime parameter, not a constant",
                               "use a number here", scope)
                if p.is_tensor:
                    self._fail(node.span, f"'{name}' is a tensor {p.shape_text}; index it",
                               f"write {name}[{', '.join(_index_hint(d) for d in p.shape)}]", scope)
                return ir.ScalarParam(name, type=p.type, span=span)
            if name in self.lets:
                return ir.Local(name, type=self.lets[name].expr.type, span=span)
        if name in self.defs:
            d = self.defs[name].node
            if d.params:
                self._fail(node.span, f"'{name}' takes {len(d.params)} argument(s)",
                           f"write {name}({', '.join(p.text for p in d.params)})", scope)
            return self._expand(d, name, (), node, scope)
        if name in FUNCTIONS:
            self._fail(node.span, f"'{name}' is a function", f"call it: {name}(...)", scope)
        if name in KEYWORDS:
            self._fail(node.span, f"'{name}' is a keyword, not a value", None, scope)
        fix = did_you_mean(name, self._visible_names(scope))
        if fix is None and scope.context == "constant":
            fix = "only numbers and functions of numbers are allowed here"
        elif fix is None:
            fix = "declare it with `param " + name + ": f32` (or i32, bool, f32[H], ...)"
        self._fail(node.span, f"unknown name '{name}'", fix, scope)

    def _tensor(self, name: str, name_span: Span, scope: _Scope) -> ir.ParamDecl:
        if name in scope.bindings:
            arg, caller = scope.bindings[name]
            if not isinstance(arg, ast.Name):
                self._fail(arg.span, "this argument is indexed like a tensor",
                           "pass the name of a tensor parameter", caller)
            return self._tensor(arg.id, arg.span, caller)
        if not scope.in_def and name in self.params:
            p = self.params[name]
            if not p.is_tensor:
                self._fail(name_span, f"'{name}' is a scalar, it cannot be indexed",
                           f"declare it as a tensor, e.g. `param {name}: {p.element}[H]`", scope)
            return p
        if name in ir.INDEX_VARS or name == "score" or (not scope.in_def and name in self.lets):
            self._fail(name_span, f"'{name}' is not a tensor", "pass the name of a tensor "
                       "parameter, e.g. `param ids: i32[B, N]`", scope)
        candidates = [n for n, p in self.params.items() if p.is_tensor] if not scope.in_def else []
        fix = did_you_mean(name, candidates) or f"declare it: `param {name}: f32[H]`"
        self._fail(name_span, f"unknown tensor '{name}'", fix, scope)

    def _index(self, node: ast.Index, scope: _Scope) -> ir.Expr:
        p = self._tensor(node.tensor, node.name_span, scope)
        if len(node.indices) != len(p.shape):
            self._fail(node.span, f"'{p.name}' has {len(p.shape)} dim(s) {p.shape_text} but is indexed "
                       f"with {len(node.indices)}",
                       f"write {p.name}[{', '.join(_index_hint(d) for d in p.shape)}]", scope)
        indices = []
        for i in node.indices:
            e = self.expr(i, scope)
            if e.type is not Type.INT:
                self._fail(i.span, f"an index must be an int, got {e.type}",
                           "round it with floor(...)" if e.type is Type.FLOAT else None, scope)
            indices.append(e)
        return ir.Load(p.name, tuple(indices), type=p.type, span=scope.site or node.span)

    def _call(self, node: ast.Call, scope: _Scope) -> ir.Expr:
        name = node.function
        span = scope.site or node.span
        if name in FUNCTIONS:
            fn = FUNCTIONS[name]
            if len(node.args) != fn.arity:
                self._fail(node.span, f"{name}() takes {fn.arity} argument(s), got {len(node.args)}",
                           f"{name}: {fn.doc}", scope)
            args = tuple(self.expr(a, scope) for a in node.args)
            problem = fn.check_args(tuple(a.type for a in args))
            if problem:
                self._fail(node.span, problem, None, scope)
            result = fn.result_type(tuple(a.type for a in args))
            if fn.kind in ("float", "to_int"):
                args = tuple(_as_float(a) for a in args)
            elif result is Type.FLOAT:
                args = tuple(_as_float(a) for a in args)
            return ir.Call(name, args, type=result, span=span)
        if name in self.defs:
            d = self.defs[name].node
            if len(node.args) != len(d.params):
                sig = f"{name}({', '.join(p.text for p in d.params)})"
                self._fail(node.span, f"{name}() takes {len(d.params)} argument(s), "
                           f"got {len(node.args)}", f"call it as {sig}", scope)
            return self._expand(d, name, node.args, node, scope)
        if not scope.in_def and name in self.params:
            self._fail(node.name_span, f"'{name}' is a parameter, not a function",
                       f"index a tensor with [...]: {name}[...]", scope)
        fix = did_you_mean(name, list(FUNCTIONS) + list(self.defs))
        known = ", ".join(sorted(FUNCTIONS))
        self._fail(node.name_span, f"unknown function '{name}'", fix or f"functions: {known}", scope)

    def _expand(self, d: ast.Definition, name: str, args, node, scope: _Scope) -> ir.Expr:
        if name in scope.stack:
            self._fail(node.span, f"'{name}' calls itself", "helpers cannot be recursive", scope)
        info = self.defs[name]
        bindings = {p.text: (a, scope) for p, a in zip(d.params, args)}
        site = scope.site if scope.site is not None else (node.span if info.builtin else None)
        inner = _Scope(scope.context, bindings, in_def=True, site=site, stack=scope.stack + (name,))
        return self.expr(d.body, inner)

    # ------------------------------------------------------------ statements

    def constant(self, node: ast.Expr, want: Type | None = None):
        e = self.expr(node, _Scope("constant"))
        if want is not None and not (e.type is want or (want is Type.FLOAT and e.type is Type.INT)):
            self._fail(node.span, f"expected a constant {want}, got {e.type}")
        try:
            return evaluate(e)
        except NotConstant as err:
            self._fail(node.span, f"'{err}' is not a constant", "use a number here")

    def _param(self, s: ast.Param) -> ir.ParamDecl:
        name = s.name.text
        if name in KEYWORDS or name in ir.INDEX_VARS or name == "score":
            self._fail(s.name.span, f"'{name}' is a reserved word", "rename the parameter")
        if name in FUNCTIONS or name in self.defs:
            self._fail(s.name.span, f"'{name}' is the name of a function", "rename the parameter")
        if name in CPP_KEYWORDS or name.startswith("_"):
            self._fail(s.name.span, f"'{name}' cannot name a parameter (it is reserved in C++)",
                       f"rename it, e.g. '{name.strip('_')}_'")
        if name in ("layout", "dropout_p", "seed", "return_lse", "q", "k", "v"):
            self._fail(s.name.span, f"'{name}' is an argument of every call",
                       "rename the parameter")
        if name in self.params:
            self._fail(s.name.span, f"parameter '{name}' is declared twice", "remove or rename one")
        if s.type.text not in PARAM_TYPES:
            fix = did_you_mean(s.type.text, PARAM_TYPES) or "use f32, i32 or bool"
            self._fail(s.type.span, f"unknown type '{s.type.text}'", fix)
        shape = None
        if s.shape is not None:
            dims = []
            for w in s.shape:
                if w.text.isdigit():
                    if int(w.text) == 0:
                        self._fail(w.span, "a dimension cannot be 0", "use a size >= 1")
                    dims.append(ir.Dim(size=int(w.text)))
                else:
                    dims.append(ir.Dim(symbol=w.text))
            shape = tuple(dims)
        default = None
        if s.default is not None:
            if shape is not None:
                self._fail(s.default.span, "a tensor parameter cannot have a default",
                           "remove `= ...`; pass the tensor at call time")
            value = self.constant(s.default)
            want = PARAM_TYPES[s.type.text]
            ok = (isinstance(value, bool) == (want is Type.BOOL)
                  and not (want is Type.INT and isinstance(value, float)))
            if not ok:
                self._fail(s.default.span, f"the default {value!r} is not a {s.type.text}",
                           "write a value of the declared type")
            default = float(value) if want is Type.FLOAT else value
        return ir.ParamDecl(name, s.type.text, shape, default, span=s.span)

    def _head_dims(self, words) -> tuple[int, ...]:
        dims = []
        for w in words:
            d = int(w.text)
            if d not in HEAD_DIMS:
                supported = ", ".join(map(str, HEAD_DIMS))
                self._fail(w.span, f"head dim {d} is not supported", f"use one of {supported}")
            dims.append(d)
        return tuple(dict.fromkeys(dims))

    def _block_sparse(self, s: ast.BlockSparse) -> ir.BlockSparse:
        pattern = s.pattern.text
        if pattern not in PATTERNS:
            fix = did_you_mean(pattern, PATTERNS) or "patterns: " + ", ".join(PATTERNS)
            self._fail(s.pattern.span, f"unknown block-sparse pattern '{pattern}'", fix)
        allowed = ["block", "block_q", "block_k"] + list(PATTERNS[pattern])
        values: dict[str, int] = {}
        positional = ["block"] + list(PATTERNS[pattern])
        for i, arg in enumerate(s.args):
            key = arg.name.text if arg.name else (positional[i] if i < len(positional) else None)
            if key is None or key not in allowed:
                bad = arg.name.span if arg.name else arg.span
                fix = did_you_mean(key, allowed) if key else None
                self._fail(bad, f"{pattern}() has no argument '{key}'" if key
                           else f"{pattern}() takes at most {len(positional)} arguments",
                           fix or f"{pattern} takes: {', '.join(allowed)}")
            if key in values:
                self._fail(arg.span, f"'{key}' is given twice", "remove one")
            value = self.constant(arg.value, Type.INT)
            if not isinstance(value, int) or isinstance(value, bool):
                self._fail(arg.value.span, f"'{key}' must be an integer", None)
            values[key] = value
        block_q = values.pop("block_q", values.get("block"))
        block_k = values.pop("block_k", values.get("block"))
        values.pop("block", None)
        if block_q is None or block_k is None:
            self._fail(s.span, f"{pattern}() needs a block size",
                       f"write {pattern}(block = 128, ...) or block_q = ..., block_k = ...")
        for b in (block_q, block_k):
            if b < 16 or b & (b - 1):
                self._fail(s.span, f"block size {b} is not a power of two >= 16",
                           "use 16, 32, 64, 128 or 256")
        options = []
        for key, default in PATTERNS[pattern].items():
            if key not in values and default is None:
                self._fail(s.span, f"{pattern}() needs '{key}'", PATTERN_HELP[pattern])
            value = values.get(key, default)
            if value < 0 or (key == "stride" and value < 1):
                self._fail(s.span, f"'{key}' = {value} is out of range", PATTERN_HELP[pattern])
            options.append((key, value))
        return ir.BlockSparse(pattern, block_q, block_k, tuple(options), span=s.span)

    def attention(self, node: ast.Attention) -> ir.AttentionSpec | None:
        self.params, self.lets = {}, {}
        n_errors = len(self.report.errors)
        seen: dict[str, ast.Statement] = {}
        head_dims, value_dim, dtypes, scale = HEAD_DIMS, None, DTYPES, None
        masks, scores, dropout, block_sparse = [], [], False, None
        mask_spans, score_spans = [], []
        for s in node.statements:
            kind = type(s).__name__
            if kind in ("HeadDim", "ValueDim", "DType", "Scale", "Dropout", "BlockSparse"):
                if kind in seen:
                    first = seen[kind].span
                    self.report.error(s.span, "this setting is given twice",
                                      f"remove one (the first is at line {first.line})")
                    continue
                seen[kind] = s
            try:
                if isinstance(s, ast.HeadDim):
                    head_dims = self._head_dims(s.values)
                elif isinstance(s, ast.ValueDim):
                    value_dim = self._head_dims([s.value])[0]
                elif isinstance(s, ast.DType):
                    names = []
                    for w in s.names:
                        if w.text not in DTYPES:
                            fix = did_you_mean(w.text, DTYPES + ("float16", "bfloat16"))
                            fix = {"did you mean 'float16'?": "write fp16",
                                   "did you mean 'bfloat16'?": "write bf16"}.get(fix, fix)
                            self._fail(w.span, f"unknown dtype '{w.text}'", fix or "use fp16 or bf16")
                        names.append(w.text)
                    dtypes = tuple(dict.fromkeys(names))
                elif isinstance(s, ast.Scale):
                    value = self.constant(s.expr, Type.FLOAT)
                    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                        self._fail(s.expr.span, f"scale must be a positive finite number, got {value}",
                                   "e.g. `scale = 1 / sqrt(64)`")
                    scale = float(value)
                elif isinstance(s, ast.Param):
                    p = self._param(s)
                    self.params[p.name] = p
                elif isinstance(s, ast.Let):
                    self._let(s)
                elif isinstance(s, ast.Mask):
                    m = self.expr(s.expr, _Scope("mask"))
                    if m.type is not Type.BOOL:
                        self._fail(s.expr.span, f"a mask must be a condition (bool), got {m.type}",
                                   "compare indices, e.g. `mask = q_idx >= kv_idx`")
                    masks.append(m)
                    mask_spans.append(s.span)
                elif isinstance(s, ast.Score):
                    e = self.expr(s.expr, _Scope("score"))
                    if e.type is Type.BOOL:
                        self._fail(s.expr.span, "a score must be a number, got a condition (bool)",
                                   "to drop pairs write a `mask = ...`, or "
                                   "`score = if <cond> then score else -inf`")
                    scores.append((_as_float(e), s))
                    score_spans.append(s.span)
                elif isinstance(s, ast.Dropout):
                    dropout = True
                elif isinstance(s, ast.BlockSparse):
                    block_sparse = self._block_sparse(s)
            except _Abort:
                continue
        if len(self.report.errors) > n_errors:
            return None
        masks = [fold(m) for m in masks]
        scores = [(fold(e), s) for e, s in scores]
        self.lets = {n: ir.LetDef(n, fold(let.expr), span=let.span) for n, let in self.lets.items()}
        mask = None
        for m in masks:
            mask = m if mask is None else ir.Binary("and", mask, m, type=Type.BOOL, span=m.span)
        score = None
        for e, s in scores:
            if not depends_on(e, is_score):
                self.report.warning(s.expr.span, "this score does not use `score`, so q and k "
                                    "get no gradient and the attention ignores them",
                                    "write it as a change of `score`, e.g. `score = score + ...`")
            score = e if score is None else ir.transform(
                e, lambda n, prev=score: prev if is_score(n) else None)
        score_derivative = None
        if score is not None:
            try:
                score_derivative = fold(derivative(score))
            except NotDifferentiable as err:
                self.report.error(err.node.span, f"the score is not differentiable in `score`: it "
                                  f"goes through {err.what}",
                                  "keep floor, ceil, // and % away from `score` (use them on "
                                  "indices), so that training can backpropagate")
                return None
        if mask is not None and isinstance(mask, ir.Const) and mask.value is False:
            self.report.warning(masks[0].span, "this mask hides every key",
                                "every output row will be 0")
        self._warn_unused(mask, score)
        return ir.AttentionSpec(
            name=node.name.text, head_dims=head_dims, value_dim=value_dim, dtypes=dtypes,
            scale=scale, params=tuple(self.params.values()), lets=tuple(self.lets.values()),
            mask=mask, score=score, score_derivative=score_derivative, dropout=dropout,
            block_sparse=block_sparse, mask_spans=tuple(mask_spans),
            score_spans=tuple(score_spans), source=self.source, span=node.span)

    def _let(self, s: ast.Let) -> None:
        name = s.name.text
        if (name in KEYWORDS or name in ir.INDEX_VARS or name == "score" or name in FUNCTIONS
                or name in self.defs or name in self.params or name in self.lets):
            self._fail(s.name.span, f"'{name}' is already a name here", "pick another name")
        e = self.expr(s.expr, _Scope("let"))
        self.lets[name] = ir.LetDef(name, e, span=s.span)

    def _warn_unused(self, mask, score) -> None:
        used: set[str] = set()
        for e in [mask, score] + [let.expr for let in self.lets.values()]:
            if e is not None:
                used |= ir.uses(e)
        for let in self.lets.values():
            if let.name not in used:
                self.report.warning(let.span, f"'{let.name}' is never used", "remove the `let`")
        for p in self.params.values():
            if p.name not in used:
                self.report.warning(p.span, f"parameter '{p.name}' is never used",
                                    "remove it, or use it in the mask or score")

    def check(self) -> list[ir.AttentionSpec]:
        specs, names = [], {}
        for node in self.module.attentions:
            name = node.name.text
            if name in names:
                self.report.error(node.name.span, f"attention '{name}' is defined twice",
                                  f"rename one (the first is at line {names[name].line})")
                continue
            names[name] = node.name.span
            spec = self.attention(node)
            if spec is not None:
                specs.append(spec)
        if not self.module.attentions and not self.report.errors:
            self.report.error(Span(1, 1, 1, 2), "no `attention NAME { ... }` block in this file",
                              "add one, e.g. `attention causal { mask = causal }`")
        self.report.raise_if_errors()
        return specs


def fold(e: ir.Expr) -> ir.Expr:
    """Replace every constant subtree by its value (ints wrap as int32, as in CUDA)."""
    def constant(node: ir.Expr):
        if isinstance(node, ir.Const) or any(
                isinstance(n, (ir.Var, ir.ScalarParam, ir.Load, ir.Local)) for n in node.walk()):
            return None
        value = evaluate(node)
        if node.type is Type.FLOAT and isinstance(value, float) and math.isnan(value):
            return None                 # keep 0/0 visible rather than a NaN literal
        return ir.Const(value, type=node.type, span=node.span)
    return ir.transform(e, constant)


def _as_float(e: ir.Expr) -> ir.Expr:
    if e.type is Type.FLOAT:
        return e
    if isinstance(e, ir.Const):
        return ir.Const(float(e.value), type=Type.FLOAT, span=e.span)
    return ir.ToFloat(e, type=Type.FLOAT, span=e.span)


def _index_hint(d: ir.Dim) -> str:
    return {"B": "b", "H": "h", "Nq": "q_idx", "Nk": "kv_idx", "N": "q_idx"}.get(str(d), "...")


@dataclass
class CheckResult:
    specs: list[ir.AttentionSpec]
    warnings: list


def check_source(text: str, path: str = "<spec>") -> CheckResult:
    """Parse and check spec text. Raises SpecError (located) on any error."""
    module = parse(text, path)
    checker = Checker(module)
    specs = checker.check()
    return CheckResult(specs, checker.report.warnings)
