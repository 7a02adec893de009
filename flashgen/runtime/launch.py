"""Building a spec's kernels on first use and calling them through ctypes.

One build module per (spec, dtype, head dim) holds the forward and backward kernels
(flashgen/render/kernels.py); flashgen/build/cache.py builds it once per machine and
content. A launcher takes one int64 array and one float array; the order of values
is written here once and read back in templates/kernels/args.cuh and by each
variant's Params::read / Grads::read:

  ints:   B, H, Hkv, Nq, Nk, varlen's cu_seqlens_q and _k pointers (or 0) and the
          rows per (batch, head) of the fp32 row buffers (Nq, or total_q); then per
          tensor of the pass (q, k, v, out | q, k, v, dO,
          out, then dQ, dK, dV, then dQ, dK, dV in fp32 (or 0)) its pointer and batch,
          head, row strides; plain pointers
          (lse, fp32 out or 0, the exact-P flag, the split-KV count and its partial
          out and lse or 0, the persistent forward's tickets or 0 | fp32 out or 0,
          lse, dlse or 0, delta, dQ accumulator) where
          args.cuh reads them; backward's
          deterministic flag (after dV); the dropout (seed lo, seed hi, offset,
          threshold, then the frame's q_first and kv_first; all 0 without dropout); the
          block-sparse lists (14 ints, flashgen/runtime/sparse.py; all 0 for a dense
          spec); then the call's Frame (4 ints) and the spec's parameters in order: a
          tensor as pointer, sizes, strides; an i32/bool scalar
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

from ..analysis.affine import affine_bias
from ..build.cache import BuiltModule, build, device_arch
from ..ir.nodes import AttentionSpec
from ..plan.tiles import TileOverride, plan_for
from ..reference.philox import MASK32, resolve_seed, threshold
from ..render.kernels import render_module
from ..render.tile_class import mask_reads, scans_tables
from ..analysis.derivative import differentiable_loads
from .arguments import WHOLE, Frame, packed_view
from .sparse import DENSE, MaskTiles, sparse_tiles


class KernelError(RuntimeError):
    """A kernel launch failed (the message is CUDA's)."""


@dataclass(frozen=True)
class Varlen:
    """A packed batch (FlashAttention-2's varlen layout): sequence b has query rows
    cu_q[b]:cu_q[b + 1] of q [total_q, H, d] and key rows cu_k[b]:cu_k[b + 1] of k and v
    [total_k, Hkv, d]. The kernels see it as a batch of `batch` sequences padded to
    max_q / max_k (the grid, the tables' and layouts' sizes), each CTA computing only its
    own sequence's rows (templates/kernels/args.cuh Shape::for_sequence)."""
    cu_q: torch.Tensor      # int32 [batch + 1], on the device
    cu_k: torch.Tensor
    max_q: int
    max_k: int

    @property
    def batch(self) -> int:
        return self.cu_q.numel() - 1


@dataclass(frozen=True)
class Paged:
    """A paged KV cache (forward only): k and v are [pages, page_size, Hkv, d]; key row r
    of batch entry b is row r % page_size of page block_table[b, r // page_size], and
    kv_lens[b] rows are valid (templates/kernels/args.cuh Shape)."""
    kv_lens: torch.Tensor       # int32 [B], on the device
    block_table: torch.Tensor   # int32 [B, pages_per_seq], on the device

    @property
    def pages_per_seq(self) -> int:
        return self.block_table.shape[1]


@dataclass(frozen=True)
class Sizes:
    """B, H, Hkv, Nq, Nk of a call as the kernels' grid and tables see them (a packed
    batch: its sequence count and longest lengths), and the fp32 row buffers' rows per
    (batch, head): Nq, or total_q."""
    B: int
    H: int
    Hkv: int
    Nq: int
    Nk: int
    rows: int
    varlen: Varlen | None = None
    paged: Paged | None = None

    @staticmethod
    def of(q, k, varlen: Varlen | None = None, paged: Paged | None = None) -> "Sizes":
        if paged is not None:      # k: [pages, page_size, Hkv, d]
            B, H, Nq, _ = q.shape
            return Sizes(B, H, k.shape[2], Nq, paged.pages_per_seq * k.shape[1], Nq,
                         paged=paged)
        if varlen is None:
            B, H, Nq, _ = q.shape
            return Sizes(B, H, k.shape[1], Nq, k.shape[2], Nq)
        return Sizes(varlen.batch, q.shape[1], k.shape[1], varlen.max_q, varlen.max_k,
                     q.shape[0], varlen)

    def ints(self) -> list[int]:
        cu = [self.varlen.cu_q.data_ptr(), self.varlen.cu_k.data_ptr()] if self.varlen else [0, 0]
        pg = self.paged
        paging = ([pg.kv_lens.data_ptr(), pg.block_table.data_ptr(), pg.pages_per_seq,
                   self.Nk // pg.pages_per_seq] if pg else [0, 0, 0, 0])
        return [self.B, self.H, self.Hkv, self.Nq, self.Nk, *cu, self.rows, *paging]

    def row_buffer(self, *inner, like, dtype=torch.float32) -> torch.Tensor:
        """An fp32 buffer of Shape::row's rows: [B, H, Nq, *inner], or [H, total_q, *inner]."""
        lead = (self.H, self.rows) if self.varlen else (self.B, self.H, self.Nq)
        return _output(*lead, *inner, like=like, dtype=dtype)


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
    def affine_bias(self) -> bool:
        """Does the score add a bias affine in kv_idx (analysis/affine.py)?"""
        return affine_bias(self.spec) is not None

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
    if key not in _VARIANTS:
        v = _VARIANTS[key] = Variant(spec, source_path, tiles)
        # derived now, not on a first call that torch.compile may be tracing: a cached
        # property filled in during tracing fails the guard made before it
        v.grad_params, v.mask_tiles_per
    return key


def variant(key: str) -> Variant:
    return _VARIANTS[key]


DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}
TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


@functools.cache
def module(key: str, dtype: torch.dtype, head_dim: int, arch: str,
           framed: bool = False) -> BuiltModule:
    """The build module of one (dtype, head dim); framed: its kernels for shards of a
    sequence (context parallelism, flashgen/runtime/ring.py), built only when used."""
    v = variant(key)
    sources = render_module(v.spec, v.source_path, DTYPE_NAMES[dtype], head_dim, v.tiles, arch,
                            framed)
    tiles = "" if v.tiles is None else f"_{v.tiles.label()}"
    dtype_name = DTYPE_NAMES[dtype]
    shards = "_shards" if framed else ""
    return build(sources, name=f"{v.spec.name}_{dtype_name}_d{head_dim}{tiles}{shards}",
                 arch=arch, label=f"{v.spec.name} fwd+bwd ({dtype_name}, d{head_dim}"
                                  f"{tiles.replace('_', ', ')}{', shards' if framed else ''})")


@functools.cache
def _arch(device_index: int) -> str:
    return device_arch(device_index)


def _library(key: str, q: torch.Tensor, frame: Frame = WHOLE) -> ctypes.CDLL:
    return module(key, q.dtype, q.shape[-1], _arch(q.device.index), frame != WHOLE).library()


def _output(*shape, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """An output buffer. FLASHGEN_POISON=1 (the GPU tests) fills it with NaN first, so an
    element the kernel forgets to write cannot pass."""
    t = torch.empty(*shape, dtype=dtype or like.dtype, device=like.device)
    if os.environ.get("FLASHGEN_POISON") == "1":
        t.fill_(float("nan"))
    return t


def _strided(t: torch.Tensor) -> list[int]:
    s = t.stride()  # one call: each stride(i) is a trip into torch (~0.4 us)
    return [t.data_ptr(), s[0], s[1], s[2]]


def _params(v: Variant, tensors: list[torch.Tensor], scalars: list[float],
            frame: Frame = WHOLE):
    """The call's frame, then the spec's parameters, as ints and floats in declaration
    order (the variant's Params::read)."""
    ints, floats = frame.ints(), []
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
    if t.data_ptr() % 16 or any((s * item) % 16 for s in t.stride()[:-1]):
        return t.contiguous()
    return t


# torch's raw accessors of the current device and stream (the ones Triton's launcher
# calls): without torch.cuda.current_stream(device) and the torch.cuda.device context a
# forward call's host time fell from 106-151 to 82-95 us (causal, N = 1024, an H200
# machine; SDPA 16-26 us; PERF.md). The CPU wheel has neither; launches never happen there.
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
_current_device = getattr(torch._C, "_cuda_getDevice", None)


def _call(lib: ctypes.CDLL, function: str, ints: list[int], floats: list[float], device):
    fn = getattr(lib, function)
    int_array = (ctypes.c_int64 * len(ints))(*ints)
    float_array = (ctypes.c_float * len(floats))(*floats)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if _raw_stream is not None and _current_device() == index:
        # the launch goes to the current device: no switch, the stream read directly
        status = fn(int_array, float_array, ctypes.c_void_p(_raw_stream(index)))
    else:
        stream = ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)
        with torch.cuda.device(device):
            status = fn(int_array, float_array, stream)
    if status != 0:
        lib.flashgen_error_string.restype = ctypes.c_char_p
        raise KernelError(f"{function} failed: {lib.flashgen_error_string(status).decode()}")


def rng_state(seed: list[int], dropout_p: float, device) -> torch.Tensor:
    """(seed lo, seed hi, offset) of a call as a CPU int64 tensor: `seed` as given, or
    (empty list) drawn from torch's generator of the device, advancing it. Nothing is
    drawn when dropout_p = 0."""
    if dropout_p > 0 and not seed:
        s, offset = resolve_seed(None, device)
        seed = [s & MASK32, s >> 32, offset]
    if not seed:  # no dropout: torch.zeros is ~3 us faster than torch.tensor from a list
        return torch.zeros(3, dtype=torch.int64)
    return torch.tensor(list(seed), dtype=torch.int64)


def _dropout(dropout_p: float, rng: torch.Tensor, frame: Frame) -> tuple[list[int], list[float]]:
    """Dropout's ints and float (templates/kernels/dropout.cuh Dropout::read)."""
    if dropout_p == 0:
        return [0] * 6, [1.0]
    return ([*rng.tolist(), threshold(dropout_p), frame.q_first, frame.kv_first],
            [1.0 / (1.0 - dropout_p)])


_MASK_TILES = WeakTensorKeyDictionary()


def _mask_tiles(key: str, sizes: Sizes, q, tensors, scalars, frame: Frame = WHOLE
                ) -> MaskTiles:
    """The tile lists of a data-dependent mask (tile_class.scans_tables) for this call:
    every tile pair classified on the GPU at the forward's and the backward's tile sizes,
    then compacted. Kept on the tensor when the spec has one (as runtime layouts are),
    and rebuilt when it is modified in place. A packed batch's lists are per sequence,
    each classified at its own lengths."""
    var = variant(key)
    B, H, _, Nq, Nk = sizes.B, sizes.H, sizes.Hkv, sizes.Nq, sizes.Nk
    plan = var.plan(q.shape[-1], _arch(q.device.index))
    by_batch, by_head = var.mask_tiles_per
    vl = sizes.varlen
    batches, heads = (B if by_batch or vl else 1), (H if by_head else 1)
    cu = [vl.cu_q.data_ptr(), vl.cu_k.data_ptr()] if vl else [0, 0]

    def classes(block_m: int, block_n: int) -> torch.Tensor:
        out = torch.empty(batches, heads, -(-Nq // block_m), -(-Nk // block_n), dtype=torch.int8,
                          device=q.device)
        ints = [batches, heads, Nq, Nk, block_m, block_n, out.data_ptr(), *cu]
        p_ints, p_floats = _params(var, tensors, scalars, frame)
        _call(_library(key, q, frame), "flashgen_tile_classes", ints + p_ints, p_floats, q.device)
        return out

    def build() -> MaskTiles:
        f, b = plan.forward, plan.backward
        return MaskTiles.of(classes(f.block_m, f.block_n), classes(b.block_m, b.block_n))

    if len(tensors) != 1 or vl is not None:
        return build()
    entries = _MASK_TILES.setdefault(tensors[0], {})
    version = tensors[0]._version
    entry = (key, version, plan, B, H, Nq, Nk, tuple(scalars), frame)
    if entry not in entries:
        # an older version of the tensor is never asked again; other calls of this one
        # (ring attention's chunk pairs, each with its frame) are
        for old in [e for e in entries if e[1] != version]:
            del entries[old]
        entries[entry] = build()
    return entries[entry]


def _sparse(key: str, sizes: Sizes, q, layout, tensors, scalars, frame: Frame) -> list[int]:
    var = variant(key)
    if var.spec.block_sparse is None:
        if var.mask_tiles_per is None:
            return DENSE
        return _mask_tiles(key, sizes, q, tensors, scalars, frame).ints()
    plan = var.plan(q.shape[-1], _arch(q.device.index))
    # a packed batch: the lists of the longest sequences, which shorter ones cut short
    # (sparse.cuh tile_row)
    return sparse_tiles(var.spec, layout, plan, sizes.Nq, sizes.Nk, q.device).ints()


def _dropout_and_sparse(key: str, sizes: Sizes, q, dropout_p, rng, layout, tensors, scalars,
                        frame: Frame, ints, floats) -> None:
    """Append what both passes pass after their fixed part: dropout, then the tile lists
    (block-sparse, or a data-dependent mask's)."""
    d_ints, d_floats = _dropout(dropout_p, rng, frame)
    ints += d_ints + _sparse(key, sizes, q, layout, tensors, scalars, frame)
    floats += d_floats


# What a forward pass keeps for a backward pass beside out and lse. The backward's delta =
# rowsum(dO * O) stands for rowsum(P * dP) and every dS of the row carries its error
# (templates/kernels/backward.cuh delta_kernel). dq / dk / dv take it from O in the input
# dtype, as FlashAttention and cuDNN do: its rounding stays inside the oracle's bound
# (tests/cpu/test_delta_rounding.py) and saves the forward's fp32 store and the delta
# kernel's fp32 read. Two cases need O in fp32: gradients that cancel to ~0 (a slope
# times a constant, a row with one key under dropout, whose O = v / (1 - p) rounds)
# missed the reference by up to 1000x; float parameters' gradients, which sum whole rows
# of dS, also need P V summed with P nearly unrounded (forward.cuh kExactP: a second
# P V MMA, forward only).
SAVE_NOTHING = 0        # inference, and dq / dk / dv without dropout
SAVE_F32_OUT = 1        # dq, dk, dv under dropout: O in fp32 too
SAVE_EXACT_F32_OUT = 2  # a float parameter's gradient wanted: and P's rounding residual


# More splits than this only add partial-O traffic: 64 CTAs per Q tile already fill an H100
# for a single (batch, head) row; it also keeps gridDim.z far below its 65535 limit.
MAX_KV_SPLITS = 64


def kv_splits(key: str, q, k, splits: int | None = None, varlen: Varlen | None = None,
              paged: Paged | None = None) -> int:
    """How many CTAs share each Q tile's K/V tiles (split-KV, templates/kernels/combine.cuh).
    None: chosen by shape. One CTA per Q tile fills the GPU when there are enough Q tiles;
    decoding (a few query rows, long K/V) has B * H of them against ~132 SMs, so where at
    most half the SMs would have one, the K/V tiles are split into as many parts as keep
    the CTAs within one wave, keeping >= 4 tiles per split (each split costs a partial O
    round trip and the combine's read of it). Measured (PERF.md, "next-call measured"): at
    128 CTAs on 132 SMs every split count was slower than none (by 10-20 % at 4k keys: a
    second wave of shorter CTAs takes what the first one saves); at 8-64 CTAs the one-wave
    count was the fastest in 14 of 16 cases and within 9 % in the others. A forced count
    is capped at the number of K/V tiles and at MAX_KV_SPLITS. A packed batch counts as its
    longest sequences."""
    var = variant(key)
    n = Sizes.of(q, k, varlen, paged)
    plan = var.plan(q.shape[-1], _arch(q.device.index)).forward
    kv_tiles = -(-n.Nk // plan.general_keys)  # split-KV runs the general instance
    if splits is not None:
        return max(1, min(int(splits), kv_tiles, MAX_KV_SPLITS))
    ctas = n.B * n.H * -(-n.Nq // plan.block_m)
    sms = _sm_count(q.device.index)
    one_wave = sms // ctas if ctas else 0           # no rows: nothing to split
    if one_wave < 2 or kv_tiles < 8:
        return 1
    return max(1, min(one_wave, kv_tiles // 4, MAX_KV_SPLITS))


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _as_kernel_sees(n: Sizes, *tensors, outputs: bool = False):
    """The tensors as the kernels take them: aligned (inputs; outputs are allocated so),
    packed ones as [B, H, total, d] views with batch stride 0."""
    if not outputs:
        tensors = [aligned(t) for t in tensors]
    return [packed_view(t, n.B) if n.varlen else t for t in tensors]


def forward(key: str, q, k, v, tensors, scalars, scale: float, dropout_p: float = 0.0,
            rng: torch.Tensor | None = None, layout: torch.Tensor | None = None,
            saved: int = SAVE_NOTHING, splits: int = 1, varlen: Varlen | None = None,
            paged: Paged | None = None, frame: Frame = WHOLE):
    """out [B, H, Nq, Dv] (q's dtype), lse [B, H, Nq] (fp32) and, for a backward pass
    (`saved`, SAVE_*), out in fp32 (else an empty tensor). rng: see rng_state; layout: a
    runtime block layout (None for a built-in pattern or a dense spec); splits: CTAs per
    Q tile over its K/V tiles (kv_splits). varlen: q, k, v are packed [total, H, d]; then
    out is [total_q, H, Dv] and lse and the fp32 out [H, total_q(, Dv)]. paged: k and v
    are a paged cache [pages, page_size, Hkv, d] (inference only). frame: the call's
    rows as the spec sees them (a shard of a longer sequence)."""
    n = Sizes.of(q, k, varlen, paged)
    Dv = v.shape[-1]
    out_shape = (*q.shape[:-1], Dv)
    if q.numel() == 0 or k.numel() == 0:
        # nothing to launch: no rows, or rows with no key (O = 0, lse = -inf, as a fully
        # masked row)
        return (q.new_zeros(out_shape), n.row_buffer(like=q).fill_(-math.inf),
                n.row_buffer(Dv, like=q).zero_() if saved
                else q.new_empty(0, dtype=torch.float32))
    var = variant(key)
    if scale < 0 and var.affine_bias:
        # Q K^T * scale = (-Q) K^T * -scale, exactly: an affine bias's forward kernels
        # take a positive scale only (kernels/softmax.cuh; the backward takes q and scale
        # as they are)
        q, scale = -q, -scale
    out = _output(*out_shape, like=q)
    lse = n.row_buffer(like=q)
    out_f32 = n.row_buffer(Dv, like=q) if saved else q.new_empty(0, dtype=torch.float32)
    ints, floats = n.ints(), [scale]
    # held until the launch: aligned() may have made copies, which must outlive it
    inputs = _as_kernel_sees(n, q, k, v)
    if paged:      # pages as the batch dim: [pages, Hkv, page_size, d]
        inputs[1:] = [t.permute(0, 2, 1, 3) for t in inputs[1:]]
    views = [*inputs, *_as_kernel_sees(n, out, outputs=True)]
    for t in views:
        ints += _strided(t)
    ints += [lse.data_ptr(), out_f32.data_ptr() if saved else 0,
             int(saved == SAVE_EXACT_F32_OUT)]
    partial_out = partial_lse = None
    if splits > 1:       # fp32 partial results, merged by the combine kernel
        partial_out = torch.empty(splits, lse.numel(), Dv, dtype=torch.float32, device=q.device)
        partial_lse = torch.empty(splits, lse.numel(), dtype=torch.float32, device=q.device)
    ints += [splits, 0 if partial_out is None else partial_out.data_ptr(),
             0 if partial_lse is None else partial_lse.data_ptr()]
    # the persistent forward's CTAs draw their units after the first from a zeroed int
    # (forward_sm90_ws.cuh); one per call, so that calls on other streams never share it.
    # A packed, paged or split call runs the general instance on a grid (forward.cu.j2
    # run()), which draws none: no zeroing kernel there, a few us of a decoding step.
    general = n.varlen is not None or paged is not None or splits > 1
    tickets = (torch.zeros(1, dtype=torch.int32, device=q.device)
               if q.is_cuda and not general
               and var.plan(q.shape[-1], _arch(q.device.index)).forward.persistent
               else None)
    ints.append(0 if tickets is None else tickets.data_ptr())
    _dropout_and_sparse(key, n, q, dropout_p, rng, layout, tensors, scalars, frame, ints, floats)
    p_ints, p_floats = _params(var, tensors, scalars, frame)
    _call(_library(key, q, frame), "flashgen_forward", ints + p_ints, floats + p_floats, q.device)
    return out, lse, out_f32


def backward(key: str, dout, q, k, v, out, lse, dlse, tensors, scalars, scale: float,
             param_grads_wanted: list[bool], deterministic: bool = False, dropout_p: float = 0.0,
             rng: torch.Tensor | None = None, layout: torch.Tensor | None = None,
             varlen: Varlen | None = None, frame: Frame = WHOLE, f32_grads: bool = False):
    """dq, dk, dv (input dtypes) and one flat fp32 tensor with the wanted parameter
    gradients, in the order of Variant.grad_params. out (the forward's fp32 out where it
    kept one, else its out), lse, dropout_p, rng, layout, varlen and frame are the
    forward call's; dlse (or None) the gradient flowing into lse. f32_grads: dq, dk and
    dv come back in fp32, unrounded (ring attention sums several calls')."""
    var = variant(key)
    by_name = dict(zip([p.name for p in var.spec.params if p.is_tensor], tensors))
    sizes = [by_name[n].numel() if want else 0
             for n, want in zip(var.grad_params, param_grads_wanted)]
    flat = torch.zeros(sum(sizes), dtype=torch.float32, device=q.device)
    if q.numel() == 0 or k.numel() == 0:      # no query or no key: every gradient is 0
        grad_dtype = torch.float32 if f32_grads else None
        return (torch.zeros_like(q, dtype=grad_dtype), torch.zeros_like(k, dtype=grad_dtype),
                torch.zeros_like(v, dtype=grad_dtype), flat)
    n = Sizes.of(q, k, varlen)
    out_f32 = out.contiguous() if out.dtype == torch.float32 else None
    D = q.shape[-1]
    delta = n.row_buffer(like=q)
    grad_dtype = torch.float32 if f32_grads else None
    dq = _output(*q.shape, like=q, dtype=grad_dtype)
    dq_accum = None  # the atomic path's fp32 dQ, row blocks of whole tiles in fragment order
    if not deterministic:
        bm = var.plan(D, _arch(q.device.index)).backward.block_m
        # backward.cuh DqFragments::tile: a packed batch's sequences each start a tile
        tiles = (n.rows // bm + n.B + 1) if varlen else -(-n.Nq // bm)
        lead = (n.H,) if varlen else (n.B, n.H)
        # zeroed by the delta kernel, which runs first (backward.cuh delta_kernel)
        dq_accum = torch.empty(*lead, tiles * bm, D, dtype=torch.float32, device=q.device)
    dk = _output(*k.shape, like=k, dtype=grad_dtype)
    dv = _output(*v.shape, like=v, dtype=grad_dtype)
    ints, floats = n.ints(), [scale]
    # held until the launch: aligned() may have made copies, which must outlive it
    views = _as_kernel_sees(n, q, k, v, dout) + ([] if out_f32 is not None
                                                  else _as_kernel_sees(n, out))
    for t in views[:4]:
        ints += _strided(t)
    ints += [0, 0, 0, 0] if out_f32 is not None else _strided(views[4])
    ints.append(0 if out_f32 is None else out_f32.data_ptr())
    dlse_ptr = 0 if dlse is None else dlse.data_ptr()
    ints += [lse.data_ptr(), dlse_ptr, delta.data_ptr(),
             0 if dq_accum is None else dq_accum.data_ptr()]
    # dq, dk, dv: in the input dtype, or in fp32 in the second three slots
    grads = sum(map(_strided, _as_kernel_sees(n, dq, dk, dv, outputs=True)), [])
    ints += [0] * 12 + grads if f32_grads else grads + [0] * 12
    ints.append(int(deterministic))
    _dropout_and_sparse(key, n, q, dropout_p, rng, layout, tensors, scalars, frame, ints, floats)
    p_ints, p_floats = _params(var, tensors, scalars, frame)
    g_ints, at = [], 0
    for name, size in zip(var.grad_params, sizes):
        shape = by_name[name].shape
        g_ints += [flat.data_ptr() + 4 * at if size else 0, *shape,
                   *torch.empty(shape, device="meta").stride()]
        at += size
    _call(_library(key, q, frame), "flashgen_backward", ints + p_ints + g_ints, floats + p_floats,
          q.device)
    return dq, dk, dv, flat
