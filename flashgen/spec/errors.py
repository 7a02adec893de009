"""Located diagnostics: every problem with a spec names `file:line:col`, shows the
line with a caret under the offending text, and says how to fix it."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Source:
    """The text of one spec file and the name it is reported under."""
    text: str
    path: str = "<spec>"

    def line(self, number: int) -> str:
        lines = self.text.splitlines()
        return lines[number - 1] if 1 <= number <= len(lines) else ""


@dataclass(frozen=True)
class Span:
    """A 1-based line/column range in a Source (end column exclusive)."""
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


NOWHERE = Span(0, 0, 0, 0)


@dataclass(frozen=True)
class Diagnostic:
    severity: str            # "error" or "warning"
    message: str
    span: Span
    source: Source
    fix: str | None = None

    def format(self) -> str:
        where = f"{self.source.path}:{self.span.line}:{self.span.column}"
        out = [f"{where}: {self.severity}: {self.message}"]
        if self.span.line > 0:
            text = self.source.line(self.span.line)
            gutter = f"{self.span.line:>5} | "
            out.append(gutter + text)
            width = (self.span.end_column - self.span.column
                     if self.span.end_line == self.span.line else len(text) - self.span.column + 1)
            out.append(" " * (len(gutter) - 2) + "| " + " " * (self.span.column - 1)
                       + "^" * max(1, width))
        if self.fix:
            out.append(f"  fix: {self.fix}")
        return "\n".join(out)


class SpecError(Exception):
    """One or more located errors in a spec. str() is the full report."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(d.format() for d in self.diagnostics))

    @property
    def first(self) -> Diagnostic:
        return self.diagnostics[0]


@dataclass
class Reporter:
    """Collects diagnostics for one source; `raise_if_errors` ends a stage."""
    source: Source
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(self, span: Span, message: str, fix: str | None = None) -> None:
        self.diagnostics.append(Diagnostic("error", message, span, self.source, fix))

    def warning(self, span: Span, message: str, fix: str | None = None) -> None:
        self.diagnostics.append(Diagnostic("warning", message, span, self.source, fix))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    def raise_if_errors(self) -> None:
        if self.errors:
            raise SpecError(self.errors)


def did_you_mean(name: str, candidates) -> str | None:
    """A 'did you mean' suggestion for an unknown name, or None."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
