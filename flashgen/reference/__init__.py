"""The executable semantics of the language (see attention.py)."""
from .attention import reference, run, visible

__all__ = ["reference", "run", "visible"]
