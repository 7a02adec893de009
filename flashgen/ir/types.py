"""The three value types of the language and the element types of parameters."""
from __future__ import annotations

import enum


class Type(enum.Enum):
    INT = "int"        # 32-bit signed, wraps on overflow (as in CUDA)
    FLOAT = "float"    # f32 in kernels; the reference's dtype in the reference
    BOOL = "bool"

    def __str__(self) -> str:
        return self.value

    @property
    def numeric(self) -> bool:
        return self is not Type.BOOL


# Parameter element types as written in a spec -> value type when read.
PARAM_TYPES = {"f32": Type.FLOAT, "i32": Type.INT, "bool": Type.BOOL}

# Input dtypes a kernel can be built for.
DTYPES = ("fp16", "bf16")

# Head dims the kernels support (QK and V).
HEAD_DIMS = (16, 32, 64, 96, 128, 192, 256)
