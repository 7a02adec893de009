"""Building a spec's kernels on first use and calling them through ctypes.

One build module per (spec, dtype, head dim) holds the forward and backward kernels
(flashgen/render/kernels.py); flashgen/build/cache.py builds it once per machine and
content. A launcher takes one int64 array and one float array; the order of values
is written here once and read back in templates/kernels/args.cuh and by each
variant's Params::read / Grads::read:

  ints:   B, H, Hkv, Nq, Nk; then per tensor of the pass (q, k, v, out | q, k, v, dO,
          out, then dK, dV) its pointer and batch, head, row strides; plain pointers
          (lse, fp32 out or 0, the exact-P flag, the split-KV count and its partial
          out and lse or 0 | fp32 out or 0, lse, dlse or 0, delta, dQ accumulator) where
          args.cuh reads them; backward's
          deterministic flag (after dV); the dropout (seed lo, seed hi, offset,
          threshold; all 0 without dropout); the block-sparse lists (14 ints,
          flashgen/runtime/sparse.py; all 0 for a dense spec); then the spec's
          parameters in order: a tensor as pointer, sizes, strides; an i32/bool scalar
          as its value. Backward then adds one gradient per differentiable table
          (pointer or 0, sizes, strides).
  floats: the softmax scale, the dropout's 1 / (1 - p), then each f32 scalar parameter
          in order."""
from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
from dataclasses import dataclass, field

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from ..build.cache import BuiltModule, build, device_arch
from ..ir.nodes import AttentionSpec
from ..plan.tiles import TileOverride, plan_for
from ..reference.philox import MASK32, resolve_seed, threshold
from ..render.kernels import render_module
from ..render.tile_class import mask_reads, scans_tables
from ..render.variant import differentiable_loads
from .sparse import DENSE, MaskTiles, sparse_tiles


class KernelError(RuntimeError):
    """A kernel launch failed (the message is CUDA's)."""


@dataclass(frozen=True)
class Variant:
    """What a launch needs to know about a spec, by registry key."""
    spec: AttentionSpec
    source_path: str
    tiles: TileOverride | None = None  # hand-picked tiles, or the planner's
    _plans: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def plan(self, head_dim: int, arch: str):
        # cached: every call asks (kv_splits, the backward's dQ rows), and planning walks
        # the IR
        if (head_dim, arch) not in self._plans:
            self._plans[head_dim, arch] = plan_for(self.spec, head_dim, self.tiles, arch)
        return self._plans[head_dim, arch]

    @functools.cached_property
    def mask_tiles_per(self) -> tuple[bool, bool] | None:
        """For a mask whose tile classes depend on the call's tables (tile_class.scans_tables):
        whether they differ by (batch, head); None for every other spec. Derived once: a
        walk of the IR on every call cost ~60 us."""
        if not scans_tables(self.spec):
            return None
        return mask_reads(self.spec, "b"), mask_reads(self.spec, "h")

    @functools.cached_property
    def grad_params(self) -> tuple[str, ...]:
        """Float tensor parameters that `score` reads: the ones with gradients."""
        return tuple(dict.fromkeys(load.name for load in differentiable_loads(self.spec)))


_VARIANTS: dict[str, Variant] = {}


def register(spec: AttentionSpec, source_path: str, tiles: TileOverride | None = None) -> str:
    """A key naming this spec (and tile override) in the ops' string argument, stable for
    their content."""
    digest = hashlib.sha256(f"{source_path}\n{spec.source.text}\n{spec.name}\n"
                            f"{tiles}".encode())
    key = f"{spec.name}:{digest.hexdigest()[:16]}"
    _VARIANTS.setdefault(key, Variant(spec, source_path, tiles))
    return key


def variant(key: str) -> Variant:
    return _VARIANTS[key]


DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}
TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


@functools.cache
def module(key: str, dtype: torch.dtype, head_dim: int, arch: str) -> BuiltModule:
    v = variant(key)
    sources = render_module(v.spec, v.source_path, DTYPE_NAMES[dtype], head_dim, v.tiles, arch)
    tiles = "" if v.tiles is None else f"_{v.tiles.label()}"
    dtype_name = DTYPE_NAMES[dtype]
    return build(sources, name=f"{v.spec.name}_{dtype_name}_d{head_dim}{tiles}", arch=arch,
                 label=f"{v.spec.name} fwd+bwd ({dtype_name}, d{head_dim}{tiles.replace('_', ', ')})")


@functools.cache
def _arch(device_index: int) -> str:
    return device_arch(device_index)


def _library(key: str, q: torch.Tensor) -> ctypes.CDLL:
    return module(key, q.dtype, q.shape[-1], _arch(q.device.index)).library()


def _output(*shape, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """An output buffer. FLASHGEN_POISON=1 (the GPU tests) fills it with NaN first, so an
    element the kernel forgets to write cannot pass."""
    t = torch.empty(*shape, dtype=dtype or like.dtype, device=like.device)
    if os.environ.get("FLASHGEN_POISON") == "1":
        t.fill_(float("nan"))
    return t


def _strided(t: torch.Tensor) -> list[int]:
    return [t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)]


def _params(v: Variant, tensors: list[torch.Tensor], scalars: list[float]):
    """The spec's parameters as ints and floats, in declaration order."""
    ints, floats = [], []
    tensor_at, scalar_at = iter(tensors), iter(scalars)
    for p in v.spec.params:
        if p.is_tensor:
            t = next(tensor_at)
            ints += [t.data_ptr(), *t.shape, *t.stride()]
        elif p.element == "f32":
            floats.append(float(next(scalar_at)))
        else:
            ints.append(int(next(scalar_at)))
    return ints, floats


def aligned(t: torch.Tensor) -> torch.Tensor:
    """t, or a contiguous copy when its rows are not 16-byte aligned (cp.async needs it)."""
    item = t.element_size()
    if t.data_ptr() % 16 or any((s * item) % 16 for s in t.stride()[:3]):
        return t.contiguous()
    return t


def _call(lib: ctypes.CDLL, function: str, ints: list[int], floats: list[float], device):
    fn = getattr(lib, function)
    int_array = (ctypes.c_int64 * len(ints))(*ints)
    float_array = (ctypes.c_float * len(floats))(*floats)
    stream = ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)
    with torch.cuda.device(device):
        status = fn(int_array, float_array, stream)
    if status != 0:
        lib.flashgen_error_string.restype = ctypes.c_char_p
        raise KernelError(f"{function} failed: {lib.flashgen_error_string(status).decode()}")


def _shape(q, k, scale) -> tuple[list[int], list[float]]:
    B, H, Nq, _ = q.shape
    return [B, H, k.shape[1], Nq, k.shape[2]], [scale]


def rng_state(seed: list[int], dropout_p: float, device) -> torch.Tensor:
    """(seed lo, seed hi, offset) of a call as a CPU int64 tensor: `seed` as given, or
    (empty list) drawn from torch's generator of the device, advancing it. Nothing is
    drawn when dropout_p = 0."""
    if dropout_p > 0 and not seed:
        s, offset = resolve_seed(None, device)
        seed = [s & MASK32, s >> 32, offset]
    return torch.tensor(list(seed) or [0, 0, 0], dtype=torch.int64)


def _dropout(dropout_p: float, rng: torch.Tensor) -> tuple[list[int], list[float]]:
    """Dropout's ints and float (templates/kernels/dropout.cuh Dropout::read)."""
    if dropout_p == 0:
        return [0, 0, 0, 0], [1.0]
    return [*rng.tolist(), threshold(dropout_p)], [1.0 / (1.0 - dropout_p)]


_MASK_TILES = WeakTensorKeyDictionary()


def _mask_tiles(key: str, q, k, tensors, scalars) -> MaskTiles:
    """The tile lists of a data-dependent mask (tile_class.scans_tables) for this call:
    every tile pair classified on the GPU at the forward's and the backward's tile sizes,
    then compacted. Kept on the tensor when the spec has one (as runtime layouts are),
    and rebuilt when it is modified in place."""
    var = variant(key)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    plan = var.plan(D, _arch(q.device.index))
    by_batch, by_head = var.mask_tiles_per
    batches, heads = (B if by_batch else 1), (H if by_head else 1)

    def classes(block_m: int, block_n: int) -> torch.Tensor:
        out = torch.empty(batches, heads, -(-Nq // block_m), -(-Nk // block_n), dtype=torch.int8,
                          device=q.device)
        ints = [batches, heads, Nq, Nk, block_m, block_n, out.data_ptr()]
        p_ints, p_floats = _params(var, tensors, scalars)
        _call(_library(key, q), "flashgen_tile_classes", ints + p_ints, p_floats, q.device)
        return out

    def build() -> MaskTiles:
        f, b = plan.forward, plan.backward
        return MaskTiles.of(classes(f.block_m, f.block_n), classes(b.block_m, b.block_n))

    if len(tensors) != 1:
        return build()
    entries = _MASK_TILES.setdefault(tensors[0], {})
    entry = (key, tensors[0]._version, plan, B, H, Nq, Nk, tuple(scalars))
    if entry not in entries:
        entries.clear()             # an older version of the tensor is never asked again
        entries[entry] = build()
    return entries[entry]


def _sparse(key: str, q, k, layout, tensors, scalars) -> list[int]:
    var = variant(key)
    if var.spec.block_sparse is None:
        if var.mask_tiles_per is None:
            return DENSE
        return _mask_tiles(key, q, k, tensors, scalars).ints()
    plan = var.plan(q.shape[-1], _arch(q.device.index))
    return sparse_tiles(var.spec, layout, plan, q.shape[2], k.shape[2], q.device).ints()


def _dropout_and_sparse(key: str, q, k, dropout_p, rng, layout, tensors, scalars, ints,
                        floats) -> None:
    """Append what both passes pass after their fixed part: dropout, then the tile lists
    (block-sparse, or a data-dependent mask's)."""
    d_ints, d_floats = _dropout(dropout_p, rng)
    ints += d_ints + _sparse(key, q, k, layout, tensors, scalars)
    floats += d_floats


# What a forward pass keeps for a backward pass beside out and lse. The backward's delta =
# rowsum(dO * O) stands for rowsum(P * dP) and every dS of the row carries its error
# (templates/kernels/backward.cuh delta_kernel): O rounded to fp16/bf16 made gradients
# that cancel to ~0 (a slope times a constant, a row with one key under dropout) miss
# the reference by up to 1000x, so a backward pass reads O in fp32; float parameters'
# gradients, which sum whole rows of dS, also need P V summed with P nearly unrounded
# (forward.cuh kExactP: a second P V MMA, forward only).
SAVE_NOTHING = 0        # inference
SAVE_F32_OUT = 1        # dq, dk, dv wanted: O in fp32 too
SAVE_EXACT_F32_OUT = 2  # a float parameter's gradient wanted: and P's rounding residual


# More splits than this only add partial-O traffic: 64 CTAs per Q tile already fill an H100
# for a single (batch, head) row; it also keeps gridDim.z far below its 65535 limit.
MAX_KV_SPLITS = 64


def kv_splits(key: str, q, k, splits: int | None = None) -> int:
    """How many CTAs share each Q tile's K/V tiles (split-KV, templates/kernels/combine.cuh).
    None: chosen by shape. One CTA per Q tile fills the GPU when there are enough Q tiles;
    decoding (a few query rows, long K/V) has B * H of them against ~132 SMs, so the K/V
    tiles are split until about two waves of CTAs run, keeping >= 4 tiles per split (each
    split costs a partial O round trip and the combine's read of it). A forced count is
    capped at the number of K/V tiles and at MAX_KV_SPLITS."""
    var = variant(key)
    B, H, Nq, D = q.shape
    plan = var.plan(D, _arch(q.device.index)).forward
    kv_tiles = -(-k.shape[2] // plan.block_n)
    if splits is not None:
        return max(1, min(int(splits), kv_tiles, MAX_KV_SPLITS))
    ctas = B * H * -(-Nq // plan.block_m)
    sms = _sm_count(q.device.index)
    if ctas == 0 or ctas >= sms or kv_tiles < 8:    # no rows: nothing to split
        return 1
    return max(1, min(-(-2 * sms // ctas), kv_tiles // 4, MAX_KV_SPLITS))


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def forward(key: str, q, k, v, tensors, scalars, scale: float, dropout_p: float = 0.0,
            rng: torch.Tensor | None = None, layout: torch.Tensor | None = None,
            saved: int = SAVE_NOTHING, splits: int = 1):
    """out [B, H, Nq, Dv] (q's dtype), lse [B, H, Nq] (fp32) and, for a backward pass
    (`saved`, SAVE_*), out in fp32 (else an empty tensor). rng: see rng_state; layout: a
    runtime block layout (None for a built-in pattern or a dense spec); splits: CTAs per
    Q tile over its K/V tiles (kv_splits)."""
    B, H, Nq, _ = q.shape
    Dv = v.shape[-1]
    if q.numel() == 0 or k.shape[2] == 0:
        # nothing to launch: no rows, or rows with no key (O = 0, lse = -inf, as a fully
        # masked row)
        return (q.new_zeros(B, H, Nq, Dv),
                torch.full((B, H, Nq), -math.inf, dtype=torch.float32, device=q.device),
                q.new_zeros((B, H, Nq, Dv) if saved else (0,), dtype=torch.float32))
    var = variant(key)
    q, k, v = aligned(q), aligned(k), aligned(v)
    out = _output(B, H, Nq, Dv, like=q)
    lse = _output(B, H, Nq, like=q, dtype=torch.float32)
    out_f32 = (_output(B, H, Nq, Dv, like=q, dtype=torch.float32) if saved
               else q.new_empty(0, dtype=torch.float32))
    ints, floats = _shape(q, k, scale)
    for t in (q, k, v, out):
        ints += _strided(t)
    ints += [lse.data_ptr(), out_f32.data_ptr() if saved else 0,
             int(saved == SAVE_EXACT_F32_OUT)]
    partial_out = partial_lse = None
    if splits > 1:       # fp32 partial results, merged by the combine kernel
        partial_out = torch.empty(splits, B, H, Nq, Dv, dtype=torch.float32, device=q.device)
        partial_lse = torch.empty(splits, B, H, Nq, dtype=torch.float32, device=q.device)
    ints += [splits, 0 if partial_out is None else partial_out.data_ptr(),
             0 if partial_lse is None else partial_lse.data_ptr()]
    _dropout_and_sparse(key, q, k, dropout_p, rng, layout, tensors, scalars, ints, floats)
    p_ints, p_floats = _params(var, tensors, scalars)
    _call(_library(key, q), "flashgen_forward", ints + p_ints, floats + p_floats, q.device)
    return out, lse, out_f32


def backward(key: str, dout, q, k, v, out, lse, dlse, tensors, scalars, scale: float,
             param_grads_wanted: list[bool], deterministic: bool = False, dropout_p: float = 0.0,
             rng: torch.Tensor | None = None, layout: torch.Tensor | None = None):
    """dq, dk, dv (input dtypes) and one flat fp32 tensor with the wanted parameter
    gradients, in the order of Variant.grad_params. out (the forward's fp32 out where it
    kept one, else its out), lse, dropout_p, rng and layout are the forward call's; dlse
    (or None) the gradient flowing into lse."""
    var = variant(key)
    by_name = dict(zip([p.name for p in var.spec.params if p.is_tensor], tensors))
    sizes = [by_name[n].numel() if want else 0
             for n, want in zip(var.grad_params, param_grads_wanted)]
    flat = torch.zeros(sum(sizes), dtype=torch.float32, device=q.device)
    if q.numel() == 0 or k.numel() == 0:      # no query or no key: every gradient is 0
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), flat
    q, k, v, dout = aligned(q), aligned(k), aligned(v), aligned(dout)
    out_f32 = out.contiguous() if out.dtype == torch.float32 else None
    out = None if out_f32 is not None else aligned(out)
    B, H, Nq, D = q.shape
    delta = torch.empty(B, H, Nq, dtype=torch.float32, device=q.device)
    dq = _output(B, H, Nq, D, like=q)
    dq_accum = None  # the atomic path's fp32 dQ, row blocks of whole tiles in fragment order
    if not deterministic:
        bm = var.plan(D, _arch(q.device.index)).backward.block_m
        dq_accum = torch.zeros(B, H, -(-Nq // bm) * bm, D, dtype=torch.float32, device=q.device)
    dk = _output(*k.shape, like=k)
    dv = _output(*v.shape, like=v)
    ints, floats = _shape(q, k, scale)
    for t in (q, k, v, dout):
        ints += _strided(t)
    ints += [0, 0, 0, 0] if out is None else _strided(out)
    ints.append(0 if out_f32 is None else out_f32.data_ptr())
    dlse_ptr = 0 if dlse is None else dlse.data_ptr()
    ints += [lse.data_ptr(), dlse_ptr, delta.data_ptr(),
             0 if dq_accum is None else dq_accum.data_ptr()]
    ints += _strided(dq) + _strided(dk) + _strided(dv) + [int(deterministic)]
    _dropout_and_sparse(key, q, k, dropout_p, rng, layout, tensors, scalars, ints, floats)
    p_ints, p_floats = _params(var, tensors, scalars)
    g_ints, at = [], 0
    for name, size in zip(var.grad_params, sizes):
        shape = by_name[name].shape
        g_ints += [flat.data_ptr() + 4 * at if size else 0, *shape,
                   *torch.empty(shape, device="meta").stride()]
        at += size
    _call(_library(key, q), "flashgen_backward", ints + p_ints + g_ints, floats + p_floats,
          q.device)
    return dq, dk, dv, flat
