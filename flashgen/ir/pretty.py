"""IR -> spec-language text, with as few parentheses as the grammar allows.

`flashgen check --ir` prints specs this way (helpers expanded, promotions implicit);
the text parses and checks back to the same IR."""
from __future__ import annotations

from .nodes import (SYMBOL, AttentionSpec, Binary, Call, Const, Expr, Load, Local, ScalarParam,
                    Select, ToFloat, Unary, Var)

# binding strength, as in grammar/flashgen.lark (higher binds tighter)
_LEVEL = {"or": 1, "and": 2, "eq": 4, "ne": 4, "lt": 4, "le": 4, "gt": 4, "ge": 4,
          "add": 5, "sub": 5, "mul": 6, "div": 6, "floordiv": 6, "mod": 6}


def _number(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if value == float("inf"):
        return "inf"
    text = repr(float(value))
    return text if any(c in text for c in ".e") else text + ".0"


def pretty(e: Expr) -> str:
    text, _ = _pretty(e)
    return text


def _wrap(sub: Expr, minimum: int) -> str:
    text, level = _pretty(sub)
    return f"({text})" if level < minimum else text


def _pretty(e: Expr) -> tuple[str, int]:
    if isinstance(e, Const):
        if isinstance(e.value, (int, float)) and not isinstance(e.value, bool) and e.value < 0:
            return "-" + _number(-e.value), 7
        return _number(e.value), 8
    if isinstance(e, (Var, ScalarParam, Local)):
        return e.name, 8
    if isinstance(e, Load):
        return f"{e.name}[{', '.join(pretty(i) for i in e.indices)}]", 8
    if isinstance(e, Call):
        return f"{e.function}({', '.join(pretty(a) for a in e.args)})", 8
    if isinstance(e, ToFloat):
        return _pretty(e.operand)
    if isinstance(e, Unary):
        if e.op == "not":
            return "!" + _wrap(e.operand, 3), 3
        return "-" + _wrap(e.operand, 7), 7
    if isinstance(e, Select):
        return (f"if {pretty(e.condition)} then {pretty(e.then)} else {pretty(e.otherwise)}", 0)
    if isinstance(e, Binary):
        level = _LEVEL[e.op]
        if level == 4:    # comparisons do not chain: both sides must bind tighter
            return f"{_wrap(e.left, 5)} {SYMBOL[e.op]} {_wrap(e.right, 5)}", 4
        return f"{_wrap(e.left, level)} {SYMBOL[e.op]} {_wrap(e.right, level + 1)}", level
    raise TypeError(e)


def format_spec(spec: AttentionSpec) -> str:
    """The checked spec as spec-language text."""
    lines = [f"attention {spec.name} {{",
             f"  head_dim = {', '.join(map(str, spec.head_dims))}"]
    if spec.value_dim is not None:
        lines.append(f"  value_dim = {spec.value_dim}")
    lines.append(f"  dtype = {', '.join(spec.dtypes)}")
    if spec.scale is not None:
        lines.append(f"  scale = {_number(spec.scale)}")
    for p in spec.params:
        shape = p.shape_text
        default = f" = {_number(p.default)}" if p.default is not None else ""
        lines.append(f"  param {p.name}: {p.element}{shape}{default}")
    for let in spec.lets:
        lines.append(f"  let {let.name} = {pretty(let.expr)}")
    if spec.mask is not None:
        lines.append(f"  mask = {pretty(spec.mask)}")
    if spec.score is not None:
        lines.append(f"  score = {pretty(spec.score)}")
    if spec.dropout:
        lines.append("  dropout")
    if spec.block_sparse is not None:
        bs = spec.block_sparse
        args = [f"block_q = {bs.block_q}", f"block_k = {bs.block_k}"]
        args += [f"{k} = {v}" for k, v in bs.options]
        lines.append(f"  block_sparse = {bs.pattern}({', '.join(args)})")
    lines.append("}")
    return "\n".join(lines)
