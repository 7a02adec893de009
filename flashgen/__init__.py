"""flashgen: exact, IO-aware attention kernels from a short declarative spec."""
from .api import AttentionOp, SpecNotFound, compile, generate, load, shipped
from .runtime.arguments import ArgumentError
from .spec.errors import SpecError

__version__ = "0.1.0"
__all__ = ["ArgumentError", "AttentionOp", "SpecError", "SpecNotFound", "compile", "generate",
           "load", "shipped"]
