"""Checking and binding the arguments of a call, before anything runs.

The reference and the kernels share this, so a wrong tensor gets the same plain
message from both: which argument, what was expected, what came."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..ir.nodes import AttentionSpec, ParamDecl
from ..spec.errors import did_you_mean
from ..reference.patterns import block_counts, fixed_layout

TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
PARAM_DTYPES = {"f32": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
                "i32": (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8),
                "bool": (torch.bool,)}


class ArgumentError(ValueError):
    """A call's arguments do not fit the spec; the message says which and how."""


@dataclass(frozen=True)
class Frame:
    """Where a call's rows sit in the sequences the spec describes
    (templates/common/frame.cuh): the spec sees query row i as q_idx = q_first + i and
    q_len = the call's rows + q_extra, keys likewise. Context parallelism
    (flashgen/runtime/ring.py) runs shards of one sequence this way."""
    q_first: int = 0
    kv_first: int = 0
    q_extra: int = 0
    kv_extra: int = 0

    def ints(self) -> list[int]:
        return [self.q_first, self.kv_first, self.q_extra, self.kv_extra]


WHOLE = Frame()      # a plain call: the whole sequences


@dataclass
class BoundCall:
    spec: AttentionSpec
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float
    dropout_p: float
    seed: object
    layout: torch.Tensor | None                        # [Hq or 1, q_blocks, kv_blocks] bool
    params: dict[str, object] = field(default_factory=dict)   # tensors or Python scalars
    sizes: dict[str, int] = field(default_factory=dict)       # B, H, Hkv, Nq, Nk, and free symbols
    # The b of this call's first batch entry: a packed (varlen) sequence run alone by the
    # reference keeps its index into the tables and its dropout stream.
    first_batch: int = 0
    # Where its rows sit in the spec's sequences (a shard of a longer one: ring.py; the
    # tables and the layout are then the whole sequence's). None: the whole sequences (a
    # Frame default would be a constant torch.compile cannot trace into a call).
    frame: Frame | None = None

    @property
    def shape(self):
        s = self.sizes
        return s["B"], s["H"], s["Hkv"], s["Nq"], s["Nk"]


MAX_GRID_Y = 65535   # CUDA's limit on gridDim.y, which the kernels give to batch x heads


def _fail(message: str):
    raise ArgumentError(message)


def _check_qkv(spec: AttentionSpec, q, k, v, for_kernel: bool) -> dict[str, int]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            _fail(f"{name} must be 4-D [batch, heads, seq, head_dim], got shape {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        _fail(f"q, k and v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        _fail(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if for_kernel:
        allowed = [TORCH_DTYPES[d] for d in spec.dtypes]
        if q.dtype not in allowed:
            _fail(f"q has dtype {q.dtype}, but '{spec.name}' is built for "
                  f"{', '.join(spec.dtypes)}; convert with q.to({allowed[0]}) "
                  "or add the dtype to the spec's `dtype =` line")
        if q.shape[0] * q.shape[1] > MAX_GRID_Y:
            _fail(f"batch x heads is {q.shape[0]} x {q.shape[1]} = {q.shape[0] * q.shape[1]}; "
                  f"the kernels take at most {MAX_GRID_Y} (one grid row each): split the "
                  "batch into calls of fewer")
        if q.device.type != "cuda":
            _fail(f"q is on {q.device}; the kernel needs CUDA tensors (use op.reference(...) on "
                  "the CPU)")
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.stride(-1) != 1:
                _fail(f"{name}'s last dim must be contiguous (stride 1), got strides "
                      f"{tuple(t.stride())}; call {name}.contiguous()")
    elif not q.is_floating_point():
        _fail(f"q must be a floating-point tensor, got {q.dtype}")
    B, Hq, Nq, d = q.shape
    Bk, Hkv, Nk, dk = k.shape
    Bv, Hv, Nv, dv = v.shape
    if Bk != B or Bv != B:
        _fail(f"batch sizes differ: q has {B}, k has {Bk}, v has {Bv}")
    if Hv != Hkv:
        _fail(f"k and v must have the same number of heads, got {Hkv} and {Hv}")
    if Nv != Nk:
        _fail(f"k and v must have the same sequence length, got {Nk} and {Nv}")
    if Hkv == 0 or Hq % Hkv:
        _fail(f"q's heads ({Hq}) must be a multiple of k/v's heads ({Hkv}) (GQA/MQA)")
    if dk != d:
        _fail(f"q and k head dims differ: {d} and {dk}")
    if d not in spec.head_dims:
        _fail(f"head dim {d} is not one of the spec's ({', '.join(map(str, spec.head_dims))}); "
              "add it to `head_dim =` in the spec")
    if dv != spec.value_dim_for(d):
        _fail(f"v's head dim is {dv}, the spec expects {spec.value_dim_for(d)}"
              + (" (set `value_dim =` in the spec for a different one)" if spec.value_dim is None
                 else ""))
    return {"B": B, "H": Hq, "Hkv": Hkv, "Nq": Nq, "Nk": Nk}


def _bind_dims(p: ParamDecl, t: torch.Tensor, sizes: dict[str, int]) -> None:
    if t.dim() != len(p.shape):
        _fail(f"parameter '{p.name}' must have {len(p.shape)} dim(s) "
              f"{p.shape_text}, got shape {tuple(t.shape)}")
    for axis, (dim, n) in enumerate(zip(p.shape, t.shape)):
        if dim.size is not None:
            expected = dim.size
        elif dim.symbol == "N":
            if sizes["Nq"] != sizes["Nk"]:
                _fail(f"parameter '{p.name}' uses N, which needs q and k of one length; got "
                      f"Nq={sizes['Nq']}, Nk={sizes['Nk']} (declare it with Nq or Nk instead)")
            expected = sizes["Nq"]
        else:
            expected = sizes.setdefault(dim.symbol, n)
        if n != expected:
            _fail(f"parameter '{p.name}' has size {n} in dim {axis} ({dim}); expected {expected}"
                  f" (shape {p.shape_text})")


def _bind_param(p: ParamDecl, value, sizes, device):
    if p.is_tensor:
        if not isinstance(value, torch.Tensor):
            _fail(f"parameter '{p.name}' must be a tensor {p.shape_text} of "
                  f"{p.element}, got {type(value).__name__}")
        if value.dtype not in PARAM_DTYPES[p.element]:
            _fail(f"parameter '{p.name}' must hold {p.element} values, got {value.dtype}")
        if value.device != device:
            _fail(f"parameter '{p.name}' is on {value.device}, q is on {device}")
        _bind_dims(p, value, sizes)
        return value
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            _fail(f"parameter '{p.name}' is a scalar {p.element}, got a tensor of shape "
                  f"{tuple(value.shape)}")
        value = value.item()
    if p.element == "bool":
        if not isinstance(value, bool):
            _fail(f"parameter '{p.name}' must be a bool, got {value!r}")
        return value
    if p.element == "i32":
        if isinstance(value, bool) or not isinstance(value, int) or not -2**31 <= value < 2**31:
            _fail(f"parameter '{p.name}' must be a 32-bit int, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(f"parameter '{p.name}' must be a number, got {value!r}")
    return float(value)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def bind(spec: AttentionSpec, q, k, v, *, scale=None, dropout_p=0.0, seed=None, layout=None,
         params: dict | None = None, for_kernel: bool = False) -> BoundCall:
    """Check every argument of a call against the spec and bind the shape symbols."""
    sizes = _check_qkv(spec, q, k, v, for_kernel)
    return _bind_rest(spec, sizes, q, k, v, scale, dropout_p, seed, layout, params, for_kernel)


def bind_shards(spec: AttentionSpec, q, k, v, length: int, *, scale=None, dropout_p=0.0,
                seed=None, layout=None, params: dict | None = None,
                for_kernel: bool = False) -> BoundCall:
    """A rank's shards of one sequence of `length` rows (ring attention,
    flashgen/runtime/ring.py): q, k and v hold the same rows; tables and the layout are
    the whole sequence's (the spec sees global indices)."""
    sizes = _check_qkv(spec, q, k, v, for_kernel)
    if sizes["Nq"] != sizes["Nk"]:
        _fail(f"ring attention shards one sequence: q has {sizes['Nq']} rows and k "
              f"{sizes['Nk']} on this rank; give each rank the same rows of q, k and v "
              "(flashgen.runtime.ring.shard)")
    whole = {**sizes, "Nq": length, "Nk": length}
    call = _bind_rest(spec, whole, q, k, v, scale, dropout_p, seed, layout, params, for_kernel)
    return call


def packed_view(t: torch.Tensor, batch: int) -> torch.Tensor:
    """[total, H, d] seen as [batch, H, total, d] with batch stride 0: how the kernels
    take a packed (varlen) tensor; sequence b's rows are found from cu_seqlens."""
    return t.transpose(0, 1).unsqueeze(0).expand(batch, -1, -1, -1)


def bind_varlen(spec: AttentionSpec, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None,
                max_seqlen_k=None, *, scale=None, dropout_p=0.0, seed=None, layout=None,
                params: dict | None = None, for_kernel: bool = False
                ) -> tuple[BoundCall, tuple[int, int]]:
    """bind() for a packed batch: q [total_q, H, d], k and v [total_k, Hkv, d], sequence b
    in rows cu_seqlens_q[b]:cu_seqlens_q[b + 1] (and _k). Tables and layouts are sized as
    a padded batch of the longest sequences would be: B sequences, Nq = max_seqlen_q,
    Nk = max_seqlen_k. Returns the call (its q, k, v the packed tensors) and (max_q, max_k).
    Without max_seqlen_* the offsets are read back and checked (a host sync); given them,
    they are trusted, as FlashAttention's varlen API does."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            _fail(f"varlen {name} must be a packed tensor [total, heads, head_dim], got "
                  f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if k.shape[0] != v.shape[0]:
        _fail(f"k and v must have the same rows, got {k.shape[0]} and {v.shape[0]}")
    for name, cu, total in (("cu_seqlens_q", cu_seqlens_q, q.shape[0]),
                            ("cu_seqlens_k", cu_seqlens_k, k.shape[0])):
        if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.numel() < 2 \
                or cu.dtype != torch.int32:
            _fail(f"{name} must be an int32 tensor [batch + 1] of sequence start rows, got "
                  f"{cu.dtype if isinstance(cu, torch.Tensor) else type(cu).__name__} "
                  f"{tuple(cu.shape) if isinstance(cu, torch.Tensor) else ''}")
        if cu.device != q.device:
            _fail(f"{name} is on {cu.device}, q is on {q.device}")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        _fail(f"cu_seqlens_q and cu_seqlens_k must describe the same sequences, got "
              f"{cu_seqlens_q.numel() - 1} and {cu_seqlens_k.numel() - 1}")
    maxes = []
    for name, cu, total, given in (("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q),
                                   ("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k)):
        if given is not None:
            if isinstance(given, bool) or not isinstance(given, int) or given < 0:
                _fail(f"max_seqlen_{name[-1]} must be an int >= 0 (the longest sequence's "
                      f"length; None reads it from {name}), got {given!r}")
            maxes.append(given)
            continue
        starts = cu.tolist()
        lengths = [b - a for a, b in zip(starts, starts[1:])]
        if starts[0] != 0 or starts[-1] != total or min(lengths) < 0:
            _fail(f"{name} must rise from 0 to the packed rows ({total}), got {starts[:8]}"
                  + (" ..." if len(starts) > 8 else ""))
        maxes.append(max(lengths))
    B = cu_seqlens_q.numel() - 1
    sizes = _check_qkv(spec, packed_view(q, B), packed_view(k, B), packed_view(v, B), for_kernel)
    sizes["Nq"], sizes["Nk"] = maxes
    call = _bind_rest(spec, sizes, q, k, v, scale, dropout_p, seed, layout, params, for_kernel)
    return call, (maxes[0], maxes[1])


def bind_paged(spec: AttentionSpec, q, k_cache, v_cache, block_table, kv_lens, *, scale=None,
               dropout_p=0.0, seed=None, layout=None, params: dict | None = None,
               for_kernel: bool = False) -> BoundCall:
    """bind() for a paged KV cache: q [B, H, Nq, d]; k_cache and v_cache [pages, page_size,
    Hkv, d]; block_table int32 [B, pages_per_seq] (the pages of each batch entry, in
    order); kv_lens int32 [B] (its valid keys). Tables and layouts are sized as for a
    padded batch with Nk = pages_per_seq * page_size. The call's k and v are the caches.
    The page numbers and lengths are trusted (no host sync), as in FlashAttention."""
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            _fail(f"{name} must be [pages, page_size, kv_heads, head_dim], got "
                  f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if k_cache.shape[:3] != v_cache.shape[:3]:
        _fail(f"k_cache and v_cache must have the same pages, page size and heads, got "
              f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        _fail("q must be [batch, heads, q_len, head_dim]")
    B = q.shape[0]
    for name, t, dims in (("block_table", block_table, (B, None)), ("kv_lens", kv_lens, (B,))):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or t.dim() != len(dims) \
                or t.shape[0] != B:
            _fail(f"{name} must be an int32 tensor [{', '.join('batch' if d else 'pages' for d in dims)}]"
                  f" with batch = {B}, got "
                  f"{(t.dtype, tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.device != q.device:
            _fail(f"{name} is on {t.device}, q is on {q.device}")
    page_size, Hkv = k_cache.shape[1], k_cache.shape[2]
    Nk = block_table.shape[1] * page_size

    def as_padded(t):     # a view with the padded batch's shape, for the checks only
        return t.as_strided((B, Hkv, Nk, t.shape[-1]), (0, t.stride(2), t.stride(1), 1))
    sizes = _check_qkv(spec, q, as_padded(k_cache), as_padded(v_cache), for_kernel)
    return _bind_rest(spec, sizes, q, k_cache, v_cache, scale, dropout_p, seed, layout, params,
                      for_kernel)


def _bind_rest(spec: AttentionSpec, sizes: dict, q, k, v, scale, dropout_p, seed, layout,
               params: dict | None, for_kernel: bool) -> BoundCall:
    params = dict(params or {})
    unknown = [n for n in params if n not in {p.name for p in spec.params}]
    if unknown:
        names = [p.name for p in spec.params]
        hint = did_you_mean(unknown[0], names)
        _fail(f"'{spec.name}' has no parameter '{unknown[0]}'"
              + (f"; {hint}" if hint else f"; its parameters: {', '.join(names) or 'none'}"))
    bound = {}
    for p in spec.params:
        if p.name not in params:
            if p.default is None:
                kind = f"tensor {p.shape_text}" if p.is_tensor else "scalar"
                _fail(f"missing parameter '{p.name}' ({p.element} {kind}): pass {p.name}=...")
            bound[p.name] = p.default
        else:
            bound[p.name] = _bind_param(p, params[p.name], sizes, q.device)
    if scale is None:
        scale = spec.scale if spec.scale is not None else 1.0 / math.sqrt(q.shape[-1])
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        _fail(f"scale must be a finite number, got {scale!r}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) \
            or not 0.0 <= dropout_p < 1.0:
        _fail(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    if dropout_p > 0 and not spec.dropout:
        _fail(f"'{spec.name}' has no dropout; add a `dropout` line to the spec to use dropout_p")
    if seed is not None and not (_is_int(seed) or (isinstance(seed, (tuple, list))
                                                   and len(seed) == 2 and all(map(_is_int, seed)))):
        _fail(f"seed must be None (drawn from torch's generator), an int, or a (seed, offset) "
              f"pair of ints, got {seed!r}")
    layout = _bind_layout(spec, layout, sizes, q.device, for_kernel)
    return BoundCall(spec, q, k, v, float(scale), float(dropout_p), seed, layout, bound, sizes)


def _bind_layout(spec: AttentionSpec, layout, sizes, device, for_kernel: bool):
    """The call's layout: the tensor passed, or a built-in pattern's (for the kernels,
    None: they take the pattern's cached tile lists, flashgen/runtime/sparse.py)."""
    bs = spec.block_sparse
    if bs is None or bs.pattern != "layout":
        if layout is not None:
            _fail(f"'{spec.name}' takes no layout"
                  + ("; its block pattern is built in" if bs is not None else
                     "; add `block_sparse = layout(block = 128)` to the spec to pass one"))
        if bs is None or for_kernel:
            return None
        return fixed_layout(bs, sizes["Nq"], sizes["Nk"], device)
    qb, kb = block_counts(bs, sizes["Nq"], sizes["Nk"])
    if layout is None:
        _fail(f"'{spec.name}' needs a block layout: pass layout=<bool tensor "
              f"[{sizes['H']} or 1, {qb}, {kb}]>")
    if not isinstance(layout, torch.Tensor) or layout.dtype != torch.bool:
        _fail("layout must be a bool tensor")
    if layout.dim() != 3 or layout.shape[0] not in (1, sizes["H"]) \
            or tuple(layout.shape[1:]) != (qb, kb):
        _fail(f"layout must have shape [{sizes['H']} or 1, {qb}, {kb}] (blocks of "
              f"{bs.block_q}x{bs.block_k}), got {tuple(layout.shape)}")
    if layout.device != device:
        _fail(f"layout is on {layout.device}, q is on {device}")
    return layout
