"""Where the grammar, templates and shipped specs live.

From a checkout they are the top-level `grammar/` and `templates/` folders; an
installed wheel carries copies inside the package (`flashgen/_data/`)."""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"flashgen cannot find its '{name}' folder next to {_PACKAGE}; "
                            "reinstall the package (pip install .)")


def grammar_path() -> Path:
    return _data_dir("grammar") / "flashgen.lark"


def templates_dir() -> Path:
    return _data_dir("templates")


def specs_dir() -> Path:
    return _PACKAGE / "specs"


def prelude_path() -> Path:
    return _PACKAGE / "check" / "prelude.attn"
