"""Spec text -> syntax tree (flashgen.spec.ast), with located parse errors."""
from __future__ import annotations

import functools

import lark
from lark import Token, Transformer, v_args

from .. import resources
from . import ast
from .errors import Diagnostic, Source, Span, SpecError, did_you_mean

# How the grammar's terminals read in an error message.
_TERMINAL_WORDS = {
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "COMPARE": "a comparison",
    "ADD": "'+' or '-'", "MUL": "'*', '/', '//' or '%'", "LBRACE": "'{'", "RBRACE": "'}'",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','",
    "EQUAL": "'='", "COLON": "':'", "MINUS": "'-'", "BANG": "'!'", "$END": "the end of the file",
}


@functools.cache
def _parser() -> lark.Lark:
    return lark.Lark(resources.grammar_path().read_text(), parser="lalr",
                     propagate_positions=True, maybe_placeholders=True)


def _span(meta_or_token) -> Span:
    m = meta_or_token
    return Span(m.line, m.column, m.end_line, m.end_column)


def _word(token: Token) -> ast.Word:
    return ast.Word(str(token), span=_span(token))


@v_args(meta=True)
class ToAst(Transformer):
    """One method per grammar rule (grammar/flashgen.lark)."""

    # -- file structure
    def start(self, meta, items):
        return items

    def attention(self, meta, children):
        name, *statements = children
        return ast.Attention(_word(name), tuple(statements), span=_span(meta))

    def definition(self, meta, children):
        name, *params, body = children
        params = tuple(_word(p) for p in params if p is not None)
        return ast.Definition(_word(name), params, body, span=_span(meta))

    # -- statements
    def head_dim(self, meta, values):
        return ast.HeadDim(tuple(_word(v) for v in values), span=_span(meta))

    def value_dim(self, meta, children):
        return ast.ValueDim(_word(children[0]), span=_span(meta))

    def dtype(self, meta, names):
        return ast.DType(tuple(_word(n) for n in names), span=_span(meta))

    def scale(self, meta, children):
        return ast.Scale(children[0], span=_span(meta))

    def param(self, meta, children):
        name, type_, shape, default = children
        return ast.Param(_word(name), _word(type_), shape, default, span=_span(meta))

    def shape(self, meta, dims):
        return tuple(dims)

    def dim(self, meta, children):
        return _word(children[0])

    def let(self, meta, children):
        return ast.Let(_word(children[0]), children[1], span=_span(meta))

    def mask(self, meta, children):
        return ast.Mask(children[0], span=_span(meta))

    def score(self, meta, children):
        return ast.Score(children[0], span=_span(meta))

    def dropout(self, meta, children):
        return ast.Dropout(span=_span(meta))

    def block_sparse(self, meta, children):
        pattern, *args = children
        return ast.BlockSparse(_word(pattern), tuple(a for a in args if a is not None),
                               span=_span(meta))

    def argument(self, meta, children):
        name, value = children
        return ast.Argument(_word(name) if name is not None else None, value, span=_span(meta))

    # -- expressions
    def select(self, meta, children):
        return ast.IfThenElse(*children, span=_span(meta))

    def logical_or(self, meta, children):
        return ast.Binary("||", children[0], children[1], span=_span(meta))

    def logical_and(self, meta, children):
        return ast.Binary("&&", children[0], children[1], span=_span(meta))

    def logical_not(self, meta, children):
        return ast.Unary("!", children[0], span=_span(meta))

    def compare(self, meta, children):
        left, op, right = children
        return ast.Binary(str(op), left, right, span=_span(meta))

    def arithmetic(self, meta, children):
        left, op, right = children
        return ast.Binary(str(op), left, right, span=_span(meta))

    def negate(self, meta, children):
        return ast.Unary("-", children[0], span=_span(meta))

    def int_literal(self, meta, children):
        return ast.IntLit(int(children[0]), span=_span(meta))

    def float_literal(self, meta, children):
        return ast.FloatLit(float(children[0]), span=_span(meta))

    def true_literal(self, meta, children):
        return ast.BoolLit(True, span=_span(meta))

    def false_literal(self, meta, children):
        return ast.BoolLit(False, span=_span(meta))

    def inf_literal(self, meta, children):
        return ast.FloatLit(float("inf"), span=_span(meta))

    def name(self, meta, children):
        return ast.Name(str(children[0]), span=_span(meta))

    def call(self, meta, children):
        fn, *args = children
        return ast.Call(str(fn), tuple(a for a in args if a is not None), span=_span(meta),
                        name_span=_span(fn))

    def index(self, meta, children):
        tensor, *indices = children
        return ast.Index(str(tensor), tuple(indices), span=_span(meta), name_span=_span(tensor))


def _expected_words(expected) -> str:
    words = []
    for name in sorted(expected):
        word = _TERMINAL_WORDS.get(name)
        if word is None:
            pattern = _parser().get_terminal(name).pattern
            word = f"'{pattern.value}'" if pattern.type == "str" else name.lower()
        if word not in words:
            words.append(word)
    if len(words) > 6:
        words = words[:6] + ["..."]
    return ", ".join(words)


STATEMENTS = ("head_dim", "value_dim", "dtype", "scale", "param", "let", "mask", "score",
              "dropout", "block_sparse")


def _word_at(source: Source, line: int, column: int) -> tuple[int, int] | None:
    """(start, end) columns of the identifier-like word around a position, if any."""
    text = source.line(line)
    i = column - 1
    if not (0 <= i < len(text)) or not (text[i].isalnum() or text[i] == "_"):
        return None
    start, end = i, i
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
        start -= 1
    while end < len(text) and (text[end].isalnum() or text[end] == "_"):
        end += 1
    return start + 1, end + 1


def _unknown_word(source: Source, line: int, column: int, expected) -> Diagnostic | None:
    """A misspelt keyword (`masks = ...`) lexes as a keyword plus a stray letter: report
    the whole word, with the statement it resembles."""
    found = _word_at(source, line, column)
    if found is None:
        return None
    start, end = found
    word = source.line(line)[start - 1:end - 1]
    split_word = start < column                     # the lexer cut a word in two
    at_statement = any(k.upper() in expected for k in STATEMENTS)
    if word in STATEMENTS or not (split_word or at_statement):
        return None
    span = Span(line, start, line, end)
    fix = did_you_mean(word, STATEMENTS) or ("statements: " + ", ".join(STATEMENTS))
    return Diagnostic("error", f"unexpected '{word}'", span, source, fix)


def _parse_error(source: Source, err: lark.exceptions.UnexpectedInput) -> Diagnostic:
    line, column = max(err.line, 1), max(err.column, 1)
    expected = getattr(err, "expected", None) or getattr(err, "allowed", None) or set()
    at_end = isinstance(err, lark.exceptions.UnexpectedEOF) or (
        isinstance(err, lark.exceptions.UnexpectedToken) and err.token.type == "$END")
    word = None if at_end else _unknown_word(source, line, column, expected)
    if word is not None:
        return word
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        char = source.line(line)[column - 1:column] or "?"
        span = Span(line, column, line, column + 1)
        return Diagnostic("error", f"unexpected character {char!r}", span, source,
                          "remove it: names are letters, digits and '_'; "
                          "operators are + - * / // % == != < <= > >= && || !")
    if isinstance(err, lark.exceptions.UnexpectedEOF):
        last = source.text.rstrip().splitlines() or [""]
        line = len(last)
        span = Span(line, len(last[-1]) + 1, line, len(last[-1]) + 2)
        return Diagnostic("error", "the file ends in the middle of a statement", span, source,
                          f"expected {_expected_words(err.expected)}; is a '}}' or ')' missing?")
    token = err.token
    if token.type == "$END":
        lines = source.text.rstrip().splitlines() or [""]
        span = Span(len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)
        return Diagnostic("error", "the file ends in the middle of a statement", span, source,
                          f"expected {_expected_words(err.expected)}; is a '}}' missing?")
    span = Span(token.line, token.column, token.end_line or token.line,
                token.end_column or token.column + max(1, len(str(token))))
    text = str(token)
    fix = f"expected {_expected_words(err.expected)}"
    if token.type == "COMPARE" and err.expected & {"RPAR", "RBRACE", "COMMA"} | {"ADD", "MUL"}:
        fix = "comparisons do not chain: write `a < b && b < c`"
    elif token.type == "EQUAL":
        fix = "write `==` to compare; `=` only follows a statement keyword"
    return Diagnostic("error", f"unexpected {text!r}", span, source, fix)


def parse(text: str, path: str = "<spec>") -> ast.Module:
    """Parse spec text into a Module; raises SpecError with a located message."""
    source = Source(text, path)
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedInput as err:
        raise SpecError([_parse_error(source, err)]) from None
    items = ToAst().transform(tree)
    return ast.Module(source,
                      tuple(i for i in items if isinstance(i, ast.Attention)),
                      tuple(i for i in items if isinstance(i, ast.Definition)))
