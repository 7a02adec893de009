"""Context parallelism: ring attention over a torch.distributed process group.

A sequence of N rows is cut into chunks, and each rank of a group of W holds some of
them for q, k and v (`shard`). Each rank computes attention for its own query rows
against every key: its K/V shard travels round the ring (rank r sends to r + 1 and
receives from r - 1, the next shard landing while this one computes), and each step's
partial result is merged into the rows' running output by lse:

    lse = logaddexp(lse_a, lse_b),  out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b

in fp32. The kernels see each (query chunk, key chunk) pair as a call placed in the
whole sequence by a Frame (templates/common/frame.cuh): masks, score expressions,
tables (passed whole, e.g. doc[B, N]) and dropout see global indices and lengths, so
the result is the one-GPU result. A pair the mask hides entirely is never launched (the
host's tile map classifies it as one tile, flashgen/plan/tile_map.py); block layouts are
cut to the pair's blocks.

Causal load balance: with `zigzag` (the default) the sequence is cut into 2W chunks and
rank r holds chunks r and 2W - 1 - r, so under a causal mask every rank has the same
work at every step (the first chunk's early rows with the last chunk's late ones).

Backward: the same ring again. Each pair's backward pass recomputes P from the merged
lse and takes delta = rowsum(dO * O) - dlse from the merged O, which is exactly the
one-GPU backward's. Each pair's gradients leave the kernels in fp32 and add up in fp32,
rounded once at the end: dQ locally, while dK and dV travel with their shard and reach
its owner after the last step. Under torch.compile a ring call is a graph break: it runs
eagerly. Gradients of learnable tables are this rank's
share; reduce them over the group, as for any parameter replicated across context-parallel
ranks (DDP over the group does).

`reference` pairs run the spec's reference (flashgen/reference/attention.py) instead of
the kernels, on any device: the same protocol is then tested on CPU processes (gloo)."""
from __future__ import annotations

import dataclasses
import functools
import shutil
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.weak import WeakTensorKeyDictionary

from ..ir.nodes import Load
from ..plan.tile_map import SKIP, tile_classes
from ..reference.attention import run as run_reference
from ..reference.patterns import fixed_layout
from ..reference.philox import MASK32, resolve_seed
from ..render.tile_class import mask_reads
from ..render.variant import inline_lets
from . import launch
from .arguments import ArgumentError, BoundCall, Frame

# Chunks start at multiples of this many rows: dropout's counter layout places a
# fragment's rows at q % 16 < 8 (templates/kernels/dropout.cuh).
CHUNK_MULTIPLE = 16


@dataclass(frozen=True)
class Sharding:
    """How a sequence of `length` rows lies on a group of `world` ranks: `chunks` equal
    chunks, rank r holding chunks r and 2W - 1 - r (zigzag) or chunk r."""
    world: int
    length: int
    zigzag: bool = True

    @property
    def chunks(self) -> int:
        return 2 * self.world if self.zigzag else self.world

    @property
    def chunk(self) -> int:
        return self.length // self.chunks

    def held_by(self, rank: int) -> tuple[int, ...]:
        """The chunks rank `rank` holds, in the order its local rows have them."""
        return (rank, 2 * self.world - 1 - rank) if self.zigzag else (rank,)

    def first_row(self, chunk: int) -> int:
        return chunk * self.chunk

    def check(self, what: str = "the sequence") -> None:
        if self.length % self.chunks or self.chunk % CHUNK_MULTIPLE:
            raise ArgumentError(
                f"{what} has {self.length} rows; ring attention over {self.world} ranks cuts it "
                f"into {self.chunks} equal chunks of a multiple of {CHUNK_MULTIPLE} rows, so "
                f"the length must be a multiple of {self.chunks * CHUNK_MULTIPLE}")


def shard(x: torch.Tensor, rank: int, world: int, dim: int = 2, zigzag: bool = True
          ) -> torch.Tensor:
    """Rank `rank`'s rows of a whole-sequence tensor (the sequence along `dim`), in the
    layout ring attention takes."""
    s = Sharding(world, x.shape[dim], zigzag)
    s.check()
    return torch.cat([x.narrow(dim, s.first_row(c), s.chunk) for c in s.held_by(rank)], dim)


def unshard(local: torch.Tensor, group=None, dim: int = 2, zigzag: bool = True) -> torch.Tensor:
    """The whole-sequence tensor from every rank's shard (an all-gather over the group)."""
    world = dist.get_world_size(group)
    local = local.contiguous()
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local, group=group)
    s = Sharding(world, local.shape[dim] * world, zigzag)
    chunks = {}
    for rank, part in enumerate(parts):
        for i, c in enumerate(s.held_by(rank)):
            chunks[c] = part.narrow(dim, i * s.chunk, s.chunk)
    return torch.cat([chunks[c] for c in range(s.chunks)], dim)


class _Ring:
    """Send to the next rank and receive from the previous one, asynchronously."""

    def __init__(self, group):
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        to_global = functools.partial(dist.get_global_rank, group) if group is not None \
            else (lambda r: r)
        self.next = to_global((self.rank + 1) % self.world)
        self.prev = to_global((self.rank - 1) % self.world)

    def pass_on(self, *tensors: torch.Tensor):
        """Start sending `tensors` on; returns (the buffers that receive the previous
        rank's, a wait function)."""
        sent = [t.contiguous() for t in tensors]     # alive until the sends complete
        received = [torch.empty_like(t) for t in sent]   # contiguous, as P2P wants
        ops = [dist.P2POp(dist.isend, t, self.next, self.group) for t in sent]
        ops += [dist.P2POp(dist.irecv, r, self.prev, self.group) for r in received]
        works = dist.batch_isend_irecv(ops)

        def wait():
            for w in works:
                w.wait()
            del sent[:]
            return received
        return wait


@dataclass
class _Pair:
    """One (query chunk, key chunk) call: local row slices and its frame."""
    q_rows: slice
    kv_rows: slice
    frame: Frame
    layout: torch.Tensor | None


class _Plan:
    """What one rank computes at each step of the ring: the pairs of its query chunks
    with the key chunks it holds then, less those the mask hides."""

    def __init__(self, op, call: BoundCall, sharding: Sharding, rank: int, scalars):
        self.sharding = s = sharding
        c, n = s.chunk, s.length
        layout = call.layout
        if call.spec.block_sparse is not None and layout is None:
            layout = _pattern_layout(call.spec.block_sparse, n, str(call.q.device))
        hidden = _hidden_chunk_pairs(op, call, s, scalars)
        self.steps = []
        for step in range(s.world):
            source = (rank - step) % s.world
            pairs = []
            for i, qc in enumerate(s.held_by(rank)):
                for j, kc in enumerate(s.held_by(source)):
                    if (qc, kc) in hidden:
                        continue
                    frame = Frame(s.first_row(qc), s.first_row(kc), n - c, n - c)
                    pairs.append(_Pair(slice(i * c, (i + 1) * c), slice(j * c, (j + 1) * c),
                                       frame, _layout_of(call.spec, layout, frame, c)))
            self.steps.append(pairs)


@functools.lru_cache(maxsize=16)
def _pattern_layout(bs, n: int, device: str) -> torch.Tensor:
    """A built-in pattern's layout of the whole sequence, kept: its pairs' slices (below)
    are then the same tensors call after call, and so are their cached tile lists."""
    return fixed_layout(bs, n, n, device)


_SLICES = WeakTensorKeyDictionary()


def _layout_of(spec, layout, frame: Frame, c: int):
    """A pair's blocks of the whole sequence's layout (the kernels index it locally),
    kept with the layout (rebuilt when it is modified in place)."""
    if layout is None:
        return None
    bs = spec.block_sparse
    slices = _SLICES.setdefault(layout, {})
    key = (layout._version, frame, c)
    if key not in slices:
        for old in [k for k in slices if k[0] != layout._version]:
            del slices[old]
        slices[key] = layout[:, frame.q_first // bs.block_q:(frame.q_first + c) // bs.block_q,
                             frame.kv_first // bs.block_k:(frame.kv_first + c) // bs.block_k
                             ].contiguous()
    return slices[key]


def _mask_reads_tables(spec) -> bool:
    return any(isinstance(n, Load) for n in inline_lets(spec, spec.mask).walk())


def _hidden_chunk_pairs(op, call: BoundCall, s: Sharding, scalars) -> frozenset:
    """(query chunk, key chunk) pairs with no visible element, by the mask's interval
    analysis over the whole chunk pair as one tile (the kernels' rule, run on the host by
    a library nvcc builds; without nvcc, as for reference_ring on a bare CPU machine,
    every pair runs). A mask that reads tables is not analysed here: its kernels skip its
    tiles anyway."""
    spec = call.spec
    if spec.mask is None or _mask_reads_tables(spec) or shutil.which("nvcc") is None:
        return frozenset()
    B, H = call.sizes["B"], call.sizes["H"]
    return _hidden_by_mask(op.key, s, tuple(scalars), B if mask_reads(spec, "b") else 1,
                           H if mask_reads(spec, "h") else 1)


@functools.lru_cache(maxsize=256)
def _hidden_by_mask(key: str, s: Sharding, scalars: tuple, batches: int, heads: int
                    ) -> frozenset:
    spec = launch.variant(key).spec
    scalar_at = iter(scalars)
    # the mask reads no table: the tables' values do not matter here
    params = {p.name: (torch.zeros([1] * len(p.shape)) if p.is_tensor else next(scalar_at))
              for p in spec.params}
    c, n = s.chunk, s.length
    hidden = set()
    for qc in range(s.chunks):
        for kc in range(s.chunks):
            frame = Frame(s.first_row(qc), s.first_row(kc), n - c, n - c)
            classes = tile_classes(spec, params, batches, heads, c, c, c, c, frame)
            if bool((classes == SKIP).all()):
                hidden.add((qc, kc))
    return frozenset(hidden)


class _KernelPairs:
    """Pairs on the GPU: the spec's framed kernels (flashgen/runtime/launch.py)."""

    def __init__(self, key: str, call: BoundCall, tensors, scalars, rng, deterministic: bool,
                 saved: int):
        self.key, self.call, self.tensors, self.scalars = key, call, tensors, scalars
        self.rng, self.deterministic, self.saved = rng, deterministic, saved

    def forward(self, q, k, v, pair: _Pair):
        """(out fp32, lse) of one pair."""
        c = self.call
        _, lse, out_f32 = launch.forward(self.key, q, k, v, self.tensors, self.scalars, c.scale,
                                         c.dropout_p, self.rng, pair.layout, self.saved,
                                         frame=pair.frame)
        return out_f32, lse

    def backward(self, dout, q, k, v, out, lse, dlse, pair: _Pair, wanted):
        """dq, dk, dv and the tables' flat gradients of one pair, from the merged out
        (fp32) and lse."""
        c = self.call
        return launch.backward(self.key, dout, q, k, v, out, lse, dlse, self.tensors,
                               self.scalars, c.scale, wanted, self.deterministic, c.dropout_p,
                               self.rng, pair.layout, frame=pair.frame, f32_grads=True)


class _ReferencePairs:
    """Pairs by the spec's reference, on any device (the protocol's CPU tests)."""

    def __init__(self, call: BoundCall, grad_names, dtype):
        self.call, self.grad_names, self.dtype = call, grad_names, dtype

    def _run(self, q, k, v, pair: _Pair, params=None):
        sizes = {**self.call.sizes, "Nq": q.shape[2], "Nk": k.shape[2]}
        one = dataclasses.replace(self.call, q=q, k=k, v=v, sizes=sizes, frame=pair.frame,
                                  params={**self.call.params, **(params or {})})
        out, lse = run_reference(one, dtype=self.dtype, return_lse=True)
        return out, lse

    def forward(self, q, k, v, pair: _Pair):
        out, lse = self._run(q, k, v, pair)
        return out.float() if out.dtype != torch.float64 else out, lse

    def backward(self, dout, q, k, v, out, lse, dlse, pair: _Pair, wanted):
        """The pair's share of the gradient: with w = exp(lse_pair - lse), the merged
        out's gradient is the sum over pairs of w (dO . dO_pair + (dO . O_pair - dO . O +
        dlse) dlse_pair), which autograd takes through the reference pair."""
        with torch.enable_grad():     # autograd.Function.backward runs without it
            return self._backward(dout, q, k, v, out, lse, dlse, pair, wanted)

    def _backward(self, dout, q, k, v, out, lse, dlse, pair: _Pair, wanted):
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        tables = {n: self.call.params[n].detach().requires_grad_()
                  for n, want in zip(self.grad_names, wanted) if want}
        o_pair, l_pair = self._run(*leaves, pair, tables)
        dout = dout.to(o_pair.dtype)
        seen = torch.isfinite(l_pair)
        w = torch.where(seen, torch.exp(l_pair.detach() - lse.to(l_pair.dtype)), 0)
        rest = (dout * (o_pair.detach() - out.to(o_pair.dtype))).sum(-1)
        if dlse is not None:
            rest = rest + dlse.to(rest.dtype)
        surrogate = (w * ((dout * o_pair).sum(-1) + rest * torch.where(seen, l_pair, 0))).sum()
        grads = torch.autograd.grad(surrogate, leaves + list(tables.values()), allow_unused=True)
        dq, dk, dv = (torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads[:3]))
        flat = [(torch.zeros_like(t) if g is None else g).reshape(-1)
                for t, g in zip(tables.values(), grads[3:])]
        return dq, dk, dv, torch.cat(flat) if flat else dq.new_zeros(0)


def _merge(out, lse, part_out, part_lse) -> None:
    """out, lse (the rows' running result, fp32) <- merged with a part by lse, in place.
    Rows that no key has reached yet (lse = -inf) take the part as it is."""
    new = torch.logaddexp(lse, part_lse)
    safe = torch.where(torch.isfinite(new), new, 0.0)
    out.mul_(torch.exp(lse - safe).unsqueeze(-1)).add_(
        part_out * torch.exp(part_lse - safe).unsqueeze(-1))
    lse.copy_(new)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, state, q, k, v, *tables):
        plan, pairs, ring = state.plan, state.pairs, state.ring
        B, H, n, _ = q.shape
        Dv = v.shape[-1]
        acc = torch.zeros(B, H, n, Dv, dtype=state.acc_dtype, device=q.device)
        lse = torch.full((B, H, n), float("-inf"), dtype=state.acc_dtype, device=q.device)
        k_now, v_now = k, v
        for step, step_pairs in enumerate(plan.steps):
            wait = ring.pass_on(k_now, v_now) if step + 1 < ring.world else None
            for p in step_pairs:
                o, l = pairs.forward(q[:, :, p.q_rows], k_now[:, :, p.kv_rows],
                                     v_now[:, :, p.kv_rows], p)
                _merge(acc[:, :, p.q_rows], lse[:, :, p.q_rows], o.to(acc.dtype), l.to(lse.dtype))
            if wait is not None:
                k_now, v_now = wait()
        ctx.state = state
        ctx.save_for_backward(q, k, v, acc, lse, *tables)
        # a copy even in acc's dtype: the saved acc must not be the output a caller may modify
        return acc.to(q.dtype, copy=True), lse

    @staticmethod
    def backward(ctx, dout, dlse):
        state = ctx.state
        plan, pairs, ring = state.plan, state.pairs, state.ring
        q, k, v, out, lse, *tables = ctx.saved_tensors
        wanted = list(ctx.needs_input_grad[4:])
        dout = dout.contiguous()
        dq = torch.zeros(q.shape, dtype=state.acc_dtype, device=q.device)
        flat = None
        k_now, v_now = k, v
        dkv_wait = None
        for step, step_pairs in enumerate(plan.steps):
            wait = ring.pass_on(k_now, v_now) if step + 1 < ring.world else None
            dk = torch.zeros(k.shape, dtype=state.acc_dtype, device=k.device)
            dv = torch.zeros(v.shape, dtype=state.acc_dtype, device=v.device)
            for p in step_pairs:
                rows = p.q_rows
                g = pairs.backward(dout[:, :, rows], q[:, :, rows], k_now[:, :, p.kv_rows],
                                   v_now[:, :, p.kv_rows], out[:, :, rows].contiguous(),
                                   lse[:, :, rows].contiguous(),
                                   None if dlse is None else dlse[:, :, rows].to(lse.dtype).contiguous(),
                                   p, wanted)
                dq[:, :, rows] += g[0]
                dk[:, :, p.kv_rows] += g[1]
                dv[:, :, p.kv_rows] += g[2]
                flat = g[3] if flat is None else flat + g[3]
            if dkv_wait is not None:   # what earlier ranks added for this shard
                got_dk, got_dv = dkv_wait()
                dk += got_dk
                dv += got_dv
            # on to the rank that holds this shard next; after the last step, to its owner
            dkv_wait = ring.pass_on(dk, dv) if ring.world > 1 else (lambda dk=dk, dv=dv: (dk, dv))
            if wait is not None:
                k_now, v_now = wait()
        dk, dv = dkv_wait()
        table_grads = [None] * len(tables)
        at = 0
        for i, t in enumerate(tables):
            if wanted[i] and flat is not None:
                table_grads[i] = flat[at:at + t.numel()].view(t.shape).to(t.dtype)
                at += t.numel()
        return (None, dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), *table_grads)


@dataclass
class _State:
    plan: _Plan
    pairs: object
    ring: _Ring
    acc_dtype: torch.dtype


def ring_attention(op, q, k, v, group=None, *, zigzag=True, scale=None, dropout_p=0.0,
                   seed=None, return_lse=False, layout=None, deterministic=False,
                   reference=False, dtype=None, **params):
    """op.ring / op.reference_ring: see AttentionOp.ring."""
    from .arguments import bind_shards
    if not dist.is_available() or not dist.is_initialized():
        raise ArgumentError("ring attention runs over a torch.distributed process group: start "
                            "the ranks with torchrun and call "
                            "torch.distributed.init_process_group() first")
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    sharding = Sharding(world, q.shape[2] * world, zigzag)
    sharding.check("the sequence (q's rows x ranks)")
    bs = op.spec.block_sparse
    if bs is not None and (sharding.chunk % bs.block_q or sharding.chunk % bs.block_k):
        raise ArgumentError(f"ring attention cuts the sequence into chunks of {sharding.chunk} "
                            f"rows, which must hold whole blocks of the layout "
                            f"({bs.block_q} x {bs.block_k}): use a longer sequence or fewer ranks")
    call = bind_shards(op.spec, q, k, v, sharding.length, scale=scale, dropout_p=dropout_p,
                       seed=seed, layout=layout, params=params, for_kernel=not reference)
    if call.dropout_p > 0:
        seed = _common_seed(seed, q.device, group)
    call = dataclasses.replace(call, seed=seed)
    tensors, scalars = op._kernel_params(call)
    grad_names = launch.variant(op.key).grad_params
    plan = _Plan(op, call, sharding, rank, scalars)
    if reference:
        pairs = _ReferencePairs(call, grad_names, dtype)
        acc_dtype = torch.float64 if (dtype or q.dtype) == torch.float64 else torch.float32
    else:
        from ..api import _saved_for_backward, seed_words
        grad_tables = [call.params[n] for n in grad_names]
        saved = max(_saved_for_backward(q, k, v, grad_tables), launch.SAVE_F32_OUT)
        rng = launch.rng_state(seed_words(seed), call.dropout_p, q.device)
        pairs = _KernelPairs(op.key, call, tensors, scalars, rng, deterministic, saved)
        acc_dtype = torch.float32
    # the tables autograd routes gradients to: the score's float ones (grad_params order)
    tables = [call.params[n] for n in grad_names]
    state = _State(plan, pairs, _Ring(group), acc_dtype)
    out, lse = _RingAttention.apply(state, q, k, v, *tables)
    return (out, lse) if return_lse else out


def _common_seed(seed, device, group):
    """One dropout seed for every rank: as given, or drawn by rank 0 and broadcast (each
    rank's own draw would drop different elements of the same pair)."""
    if seed is not None:
        return seed
    s, offset = resolve_seed(None, device)
    words = torch.tensor([s & MASK32, s >> 32, offset], dtype=torch.int64, device=device)
    dist.broadcast(words, dist.get_global_rank(group, 0) if group is not None else 0,
                   group=group)
    lo, hi, offset = words.tolist()
    return (hi << 32 | lo, offset)
