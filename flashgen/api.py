"""The Python API: load a spec, compile it to an op, generate its CUDA sources."""
from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import torch

from . import resources
from .check.checker import check_source
from .ir.nodes import AttentionSpec
from .reference.attention import run as run_reference, run_varlen as run_varlen_reference
from .render.kernels import render_units
from .render.variant import render_variant
from .build.cache import BuiltModule
from .plan.tiles import TileOverride, TilePlan, check_override
from .runtime import launch
from .reference.philox import MASK32, resolve_seed
from .runtime.arguments import ArgumentError, bind, bind_paged, bind_varlen
from .runtime.op import attention
from .spec.errors import Diagnostic, SpecError, did_you_mean
from .spec.parse import parse


# what the kernels read tensor parameters as (templates/common/expr.cuh TensorRef)
KERNEL_ELEMENT = {"f32": torch.float32, "i32": torch.int32, "bool": torch.bool}


def seed_words(seed) -> list[int]:
    """A call's seed as the op takes it: [] (draw from the generator) or
    [seed lo, seed hi, offset]."""
    if seed is None:
        return []
    s, offset = resolve_seed(seed, "cpu")
    return [s & MASK32, s >> 32, offset]


class SpecNotFound(LookupError):
    """A spec argument names no file, no shipped spec and is not spec text."""


@functools.cache
def shipped() -> dict[str, Path]:
    """Shipped specs: attention name -> file."""
    index = {}
    for path in sorted(resources.specs_dir().glob("*.attn")):
        for attention in parse(path.read_text(), str(path)).attentions:
            index[attention.name.text] = path
    return index


def _display_path(path: Path) -> str:
    """How generated code names a spec file: shipped specs relative to the repository,
    so that `flashgen generate` output is the same on every machine."""
    try:
        return str(path.resolve().relative_to(resources.specs_dir().parent.parent)).replace(os.sep, "/")
    except ValueError:
        return str(path)


def _source_of(spec: str | os.PathLike) -> tuple[str, str]:
    """(text, path) for a path, spec text, or shipped spec name."""
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and "{" not in spec
                                          and (spec.endswith(".attn") or os.sep in spec)):
        path = Path(spec)
        if not path.is_file():
            raise SpecNotFound(f"no spec file '{path}'")
        return path.read_text(), _display_path(path)
    if "{" in spec:
        return spec, "<string>"
    if spec in shipped():
        path = shipped()[spec]
        return path.read_text(), _display_path(path)
    if Path(spec).is_file():
        return Path(spec).read_text(), str(spec)
    hint = did_you_mean(spec, shipped())
    raise SpecNotFound(f"'{spec}' is not a spec file, spec text, or a shipped spec"
                       + (f"; {hint}" if hint else "; `flashgen list` shows the shipped specs"))


def load_all(spec: str | os.PathLike) -> tuple[list[AttentionSpec], list[Diagnostic]]:
    """Every attention block of a spec, checked; and the checker's warnings."""
    text, path = _source_of(spec)
    result = check_source(text, path)
    if isinstance(spec, str) and spec in shipped() and "{" not in spec:
        result.specs = [s for s in result.specs if s.name == spec] or result.specs
    return result.specs, result.warnings


def load(spec: str | os.PathLike, name: str | None = None) -> AttentionSpec:
    """One checked attention block (`name` picks it when the file holds several)."""
    specs, _ = load_all(spec)
    if name is not None:
        for s in specs:
            if s.name == name:
                return s
        names = [s.name for s in specs]
        hint = did_you_mean(name, names)
        raise SpecNotFound(f"no attention '{name}' in the spec"
                           + (f"; {hint}" if hint else f"; it holds {', '.join(names)}"))
    if len(specs) > 1:
        raise SpecNotFound(f"the spec holds {len(specs)} attention blocks "
                           f"({', '.join(s.name for s in specs)}); pick one with name=...")
    return specs[0]


def _saved_for_backward(q, k, v, grad_tables, dropout_p: float = 0.0) -> int:
    """What the forward pass keeps for a backward pass (launch.SAVE_*): nothing without
    autograd; for dq / dk / dv nothing either (delta = rowsum(dO * O) is taken from O in
    the input dtype, as FlashAttention and cuDNN do), except under dropout, where a row
    with one visible key has O = v / (1 - p), which rounds while its exact dS is 0, and
    the fp32 O keeps delta exact; P V with P less rounded for a float table's gradient.
    grad_tables: the tables the score differentiates (Variant.grad_params); a table only
    the mask reads has no gradient, whatever its requires_grad says."""
    if not torch.is_grad_enabled():
        return launch.SAVE_NOTHING
    if any(t.requires_grad for t in grad_tables):
        return launch.SAVE_EXACT_F32_OUT
    if dropout_p > 0 and (q.requires_grad or k.requires_grad or v.requires_grad):
        return launch.SAVE_F32_OUT
    return launch.SAVE_NOTHING


class AttentionOp:
    """A compiled attention variant: `op(q, k, v, **params)` runs its kernel on CUDA
    tensors (autograd and torch.compile included); `op.reference(...)` computes the
    same function with PyTorch ops. Kernels build on first use of a (dtype, head dim)
    and are cached on disk (`flashgen build` builds them ahead of time)."""

    def __init__(self, spec: AttentionSpec, source_path: str = "<string>",
                 tiles: TileOverride | None = None):
        self.spec = spec
        self.source_path = source_path
        self.tiles = tiles
        self.key = launch.register(spec, source_path, tiles)

    def __repr__(self) -> str:
        return f"<flashgen op {self.spec.name}>"

    def __call__(self, q, k, v, *, scale=None, dropout_p=0.0, seed=None, return_lse=False,
                 layout=None, deterministic=False, kv_splits=None, **params):
        """Attention of q [B, H, Nq, d], k [B, Hkv, Nk, d], v [B, Hkv, Nk, dv] (CUDA, the
        spec's dtypes, any strides with a contiguous last dim). deterministic=True makes
        dq, dk and dv bit-identical run to run (dQ by a second pass instead of atomics);
        gradients of the score's float tables still add with float atomics.

        dropout_p (specs with `dropout`): seed=None draws a seed and offset from torch's
        CUDA generator, advancing it (torch.manual_seed reproduces a run); an int, or a
        (seed, offset) pair, pins the mask. layout: the bool block layout of a
        `block_sparse = layout(...)` spec. kv_splits: how many CTAs share a Q tile's
        keys (split-KV, for decoding: few query rows, many keys); None picks it by shape."""
        call = bind(self.spec, q, k, v, scale=scale, dropout_p=dropout_p, seed=seed,
                    layout=layout, params=params, for_kernel=True)
        return self._run(call, seed, deterministic, kv_splits, return_lse)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
               *, scale=None, dropout_p=0.0, seed=None, return_lse=False, layout=None,
               deterministic=False, kv_splits=None, **params):
        """Attention over a packed batch of sequences of their own lengths (FlashAttention-2's
        varlen API): q [total_q, H, d], k [total_k, Hkv, d], v [total_k, Hkv, dv];
        sequence b is rows cu_seqlens_q[b]:cu_seqlens_q[b + 1] of q (int32 [B + 1], on the
        GPU) and the same of cu_seqlens_k for k and v. Returns out [total_q, H, dv] (and
        lse [H, total_q]). No work is spent on padding.

        Within a sequence the spec sees b, its own q_idx / kv_idx from 0 and its own q_len
        / kv_len, exactly as if that sequence were called alone (op.reference_varlen runs
        it so). Tables and layouts are sized as for a padded batch of the longest
        sequences: [B, max_seqlen_q, ...]; a block pattern is the longest sequences',
        cut short. max_seqlen_*: None reads cu_seqlens back and checks them (a host
        sync); given, they are trusted. Other arguments as for a call."""
        call, maxes = bind_varlen(self.spec, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                  max_seqlen_k, scale=scale, dropout_p=dropout_p, seed=seed,
                                  layout=layout, params=params, for_kernel=True)
        varlen = launch.Varlen(cu_seqlens_q, cu_seqlens_k, *maxes)
        return self._run(call, seed, deterministic, kv_splits, return_lse, varlen)

    def paged(self, q, k_cache, v_cache, block_table, kv_lens, *, scale=None, dropout_p=0.0,
              seed=None, return_lse=False, layout=None, kv_splits=None, **params):
        """Attention of q [B, H, Nq, d] against a paged KV cache, for decoding (forward
        only): k_cache and v_cache [pages, page_size, Hkv, d]; entry b's key row r is row
        r % page_size of page block_table[b, r // page_size] (int32 [B, pages_per_seq]),
        and kv_lens[b] (int32 [B]) rows are valid. On sm90 any page_size works; the
        mma.sync family wants a multiple of its K/V tile (64 or 128; 256 always works;
        check_page_size). Queries and keys are
        bottom-right aligned only through the spec (`causal_bottom_right` for new tokens
        at the end of the cache). Page numbers and lengths are trusted (no host sync),
        as in FlashAttention; returns out [B, H, Nq, dv] (and lse [B, H, Nq])."""
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k_cache, v_cache)):
            raise ArgumentError("op.paged is forward only (a KV cache is for inference): "
                                "call it under torch.no_grad(), or use op(...) to train")
        var = launch.variant(self.key)
        if var.mask_tiles_per is not None:
            raise ArgumentError(f"'{self.spec.name}' has a mask whose tile lists come from its "
                                "tables; a paged cache does not take it yet: use op.varlen")
        call = bind_paged(self.spec, q, k_cache, v_cache, block_table, kv_lens, scale=scale,
                          dropout_p=dropout_p, seed=seed, layout=layout, params=params,
                          for_kernel=True)
        check_page_size(var.plan(q.shape[-1], launch._arch(q.device.index)).forward,
                        k_cache.shape[1])
        paged = launch.Paged(kv_lens, block_table)
        tensors, scalars = self._kernel_params(call)
        rng = launch.rng_state(seed_words(seed), call.dropout_p, q.device)
        with torch.no_grad():
            out, lse, _ = launch.forward(self.key, q, k_cache, v_cache, tensors, scalars,
                                         call.scale, call.dropout_p, rng, call.layout,
                                         launch.SAVE_NOTHING,
                                         launch.kv_splits(self.key, q, k_cache, kv_splits,
                                                          paged=paged), paged=paged)
        return (out, lse) if return_lse else out

    def ring(self, q, k, v, group=None, *, zigzag=True, scale=None, dropout_p=0.0, seed=None,
             return_lse=False, layout=None, deterministic=False, **params):
        """Context parallelism: attention over one long sequence whose rows are spread over
        the ranks of a torch.distributed group (ring attention, NCCL; autograd included).
        q [B, H, n, d], k [B, Hkv, n, d], v [B, Hkv, n, dv] are this rank's rows, as
        flashgen.runtime.ring.shard cuts them (zigzag: rank r holds chunks r and
        2W - 1 - r of 2W, which balances a causal mask; else chunk r of W); the
        sequence is n x W rows, a multiple of 16 x the chunk count. Tables and a layout
        are the whole sequence's: the spec sees global q_idx, kv_idx, q_len and kv_len,
        so the result is the one-GPU result's rows. Returns this rank's out [B, H, n, dv]
        (and lse [B, H, n]). Every rank must call it with the same arguments but its
        rows; dropout's seed (None: drawn on rank 0) is shared. Gradients of learnable
        tables are this rank's share: reduce them over the group."""
        from .runtime.ring import ring_attention
        return ring_attention(self, q, k, v, group, zigzag=zigzag, scale=scale,
                              dropout_p=dropout_p, seed=seed, return_lse=return_lse,
                              layout=layout, deterministic=deterministic, **params)

    def reference_ring(self, q, k, v, group=None, *, zigzag=True, scale=None, dropout_p=0.0,
                       seed=None, return_lse=False, layout=None,
                       dtype: torch.dtype | None = None, **params):
        """op.ring's protocol with the spec's reference for each step's pair of chunks
        instead of the kernels: any device and backend (e.g. CPU processes over gloo)."""
        from .runtime.ring import ring_attention
        return ring_attention(self, q, k, v, group, zigzag=zigzag, scale=scale,
                              dropout_p=dropout_p, seed=seed, return_lse=return_lse,
                              layout=layout, reference=True, dtype=dtype, **params)

    def _kernel_params(self, call):
        """The call's tensor parameters as the kernels read them, and its scalars."""
        tensors, scalars = [], []
        for p in self.spec.params:
            value = call.params[p.name]
            if p.is_tensor:
                tensors.append(value.to(KERNEL_ELEMENT[p.element]))
            else:
                scalars.append(float(value))
        return tensors, scalars

    def _run(self, call, seed, deterministic, kv_splits, return_lse,
             varlen: launch.Varlen | None = None):
        """The kernels on a bound call (padded, or packed with `varlen`)."""
        q, k, v = call.q, call.k, call.v
        tensors, scalars = self._kernel_params(call)
        grad_tables = [call.params[n] for n in launch.variant(self.key).grad_params]
        packed = ([varlen.cu_q, varlen.cu_k], [varlen.max_q, varlen.max_k]) if varlen else ((), ())
        out, lse, _, _ = attention(self.key, q, k, v, tensors, scalars, call.scale,
                                   call.dropout_p, seed_words(seed), call.layout,
                                   bool(deterministic),
                                   _saved_for_backward(q, k, v, grad_tables, call.dropout_p),
                                   launch.kv_splits(self.key, q, k, kv_splits, varlen), *packed)
        return (out, lse) if return_lse else out

    def reference(self, q, k, v, *, scale=None, dropout_p=0.0, seed=None, return_lse=False,
                  layout=None, dtype: torch.dtype | None = None, **params):
        """The spec's exact semantics in PyTorch (any device; `dtype` to compute in another
        precision, e.g. torch.float64). With the same seed it draws the kernel's dropout."""
        call = bind(self.spec, q, k, v, scale=scale, dropout_p=dropout_p, seed=seed,
                    layout=layout, params=params)
        return run_reference(call, dtype=dtype, return_lse=return_lse)

    def reference_paged(self, q, k_cache, v_cache, block_table, kv_lens, *, scale=None,
                        dropout_p=0.0, seed=None, return_lse=False, layout=None,
                        dtype: torch.dtype | None = None, **params):
        """op.paged's semantics in PyTorch: each entry's keys gathered from its pages, then
        run as a packed batch (reference_varlen)."""
        call = bind_paged(self.spec, q, k_cache, v_cache, block_table, kv_lens, scale=scale,
                          dropout_p=dropout_p, seed=seed, layout=layout, params=params)
        B, H, Nq, _ = q.shape
        ps = k_cache.shape[1]
        rows = [block_table[b, r // ps].long() * ps + r % ps
                for b in range(B) for r in [torch.arange(int(kv_lens[b]), device=q.device)]]
        k, v = (t.reshape(-1, *t.shape[2:])[torch.cat(rows)] for t in (k_cache, v_cache))

        def offsets(lengths):
            return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()],
                                dtype=torch.int32, device=q.device)
        cu_q, cu_k = offsets([Nq] * B), offsets([len(r) for r in rows])
        packed = dataclasses.replace(call, q=q.transpose(1, 2).reshape(B * Nq, H, -1), k=k, v=v)
        out, lse = run_varlen_reference(packed, cu_q, cu_k, dtype=dtype, return_lse=True)
        out = out.view(B, Nq, H, -1).transpose(1, 2)
        lse = lse.view(H, B, Nq).transpose(0, 1)
        return (out, lse) if return_lse else out

    def reference_varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, *, scale=None,
                         dropout_p=0.0, seed=None, return_lse=False, layout=None,
                         dtype: torch.dtype | None = None, **params):
        """op.varlen's semantics in PyTorch, one sequence at a time (any device)."""
        call, _ = bind_varlen(self.spec, q, k, v, cu_seqlens_q, cu_seqlens_k, scale=scale,
                              dropout_p=dropout_p, seed=seed, layout=layout, params=params)
        return run_varlen_reference(call, cu_seqlens_q, cu_seqlens_k, dtype=dtype,
                                    return_lse=return_lse)


def check_page_size(forward, page_size: int) -> None:
    """A paged cache's pages against the forward's K/V tiles (`forward`: a ForwardPlan). A
    tile must lie in one page (page_size a multiple of the tile), except in the sm90
    family, where a tile that spans pages (pages shorter than the general instance's 128
    keys, 64 at d = 256, or not a multiple of them) takes its pages from a warp's lanes
    (schedule.cuh PageWindow) or, in the decoding instance, by bands of rows (PageBand)."""
    block_n = forward.block_n
    if page_size % block_n == 0 or forward.family == "wgmma":
        return
    raise ArgumentError(f"page_size is {page_size}; the forward reads K/V in tiles of "
                        f"{block_n} rows, so use a multiple of {block_n}")


def compile(spec: str | os.PathLike, name: str | None = None, *,  # noqa: A001
            forward_tile: tuple[int, int] | None = None,
            backward_tile: tuple[int, int, int] | None = None,
            family: str | None = None) -> AttentionOp:
    """Check a spec (a path, spec text, or a shipped spec's name) and return its op.

    forward_tile=(BM, BN) and backward_tile=(BM, BN, warps) replace the planner's tiles
    (the benchmark's block-size sweep); shared memory and warp layouts are checked per
    head dim when a module builds. family picks the kernel family: "wgmma" (Hopper's
    warpgroup MMA, the default on sm_90a where the head dims allow it; the backward's up
    to d = 128) or "mma" (mma.sync, every arch); for the forward on sm_90a also
    "wgmma_ws" (the warp-specialised kernel, one CTA per Q tile) and
    "wgmma_ws_persistent" (one CTA per SM running Q tiles, the default at d <= 128;
    templates/kernels/forward_sm90_ws.cuh)."""
    spec_ = load(spec, name)
    tiles = None
    if forward_tile is not None or backward_tile is not None or family is not None:
        tiles = check_override(TileOverride(
            forward=None if forward_tile is None else tuple(map(int, forward_tile)),
            backward=None if backward_tile is None else tuple(map(int, backward_tile)),
            family=family))
    return AttentionOp(spec_, _source_of(spec)[1], tiles)


def generate(spec: str | os.PathLike, out_dir: str | os.PathLike, name: str | None = None
             ) -> list[Path]:
    """Write the CUDA sources of a spec's attention blocks under out_dir/<name>/.
    Needs no GPU. Returns the files written."""
    specs, _ = load_all(spec)
    if name is not None:
        specs = [load(spec, name)]
    _, path = _source_of(spec)
    written = []
    for s in specs:
        folder = Path(out_dir) / s.name
        folder.mkdir(parents=True, exist_ok=True)
        files = {"variant.cuh": render_variant(s, path)}
        for dtype in s.dtypes:
            for head_dim in s.head_dims:
                files.update(render_units(s, path, dtype, head_dim))
        for file_name, text in files.items():
            (folder / file_name).write_text(text)
            written.append(folder / file_name)
    return written


def _configs(spec: AttentionSpec, dtypes, head_dims) -> list[tuple[str, int]]:
    for d in head_dims or ():
        if d not in spec.head_dims:
            raise SpecNotFound(f"'{spec.name}' has no head dim {d} "
                               f"(it has {', '.join(map(str, spec.head_dims))})")
    for t in dtypes or ():
        if t not in spec.dtypes:
            raise SpecNotFound(f"'{spec.name}' has no dtype {t} (it has {', '.join(spec.dtypes)})")
    return [(t, d) for t in (dtypes or spec.dtypes) for d in (head_dims or spec.head_dims)]


def build(spec: str | os.PathLike, name: str | None = None, *, dtypes=None, head_dims=None,
          arch: str | None = None, forward_tile: tuple[int, int] | None = None,
          backward_tile: tuple[int, int, int] | None = None,
          shards: bool = False, family: str | None = None) -> list[tuple[str, int, BuiltModule]]:
    """Build (or find in the cache) the kernel modules of a spec, in parallel, for the
    current GPU's arch or `arch` (e.g. "sm_90a"); shards: the modules op.ring calls.
    Returns (dtype, head dim, module)s."""
    from concurrent.futures import ThreadPoolExecutor

    from .build.cache import device_arch
    op = compile(spec, name, forward_tile=forward_tile, backward_tile=backward_tile,
                 family=family)
    arch = arch or (device_arch() if torch.cuda.is_available() else "sm_90a")
    configs = _configs(op.spec, dtypes, head_dims)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        modules = pool.map(lambda c: launch.module(op.key, launch.TORCH_DTYPES[c[0]], c[1], arch,
                                                   shards), configs)
        return [(t, d, m) for (t, d), m in zip(configs, modules)]


def explain(spec: str | os.PathLike, name: str | None = None, *, dtypes=None, head_dims=None,
            arch: str = "sm_90a") -> list[tuple[str, int, TilePlan, dict]]:
    """The tile plan and ptxas's report (registers, spills, shared memory) of each kernel
    of a spec, compiled for `arch` without a GPU. Returns (dtype, head dim, plan, report)s."""
    from concurrent.futures import ThreadPoolExecutor

    from .build.cache import ptxas_report
    from .plan.tiles import plan_for
    from .render.kernels import render_module
    spec_, path = load(spec, name), _source_of(spec)[1]
    configs = _configs(spec_, dtypes, head_dims)

    def one(config):
        t, d = config
        report = ptxas_report(render_module(spec_, path, t, d, arch=arch), arch)
        return t, d, plan_for(spec_, d, arch=arch), report
    with ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) // 2)) as pool:
        return list(pool.map(one, configs))


__all__ = ["AttentionOp", "SpecError", "SpecNotFound", "build", "compile", "explain", "generate",
           "load", "shipped"]
