"""How each peer runs one case, or why it cannot (NotExpressible: recorded as "n/a").

The peers: PyTorch's scaled_dot_product_attention restricted to one backend (flash =
FlashAttention-2, cuDNN, memory-efficient), FlexAttention under torch.compile, and
standard attention (flashgen's reference in the inputs' dtype: the N x N scores
materialised). flashgen itself runs through its op. A runner's `forward()` is what gets
timed; whatever it needs beforehand (an explicit mask, a BlockMask) is built in setup,
timed separately, and stays allocated, as it would in a model."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..api import AttentionOp
from ..ir.nodes import SCORE_VAR, AttentionSpec, Binary, Expr, Var
from ..runtime.arguments import BoundCall
from . import NotExpressible, flex
from .grid import Visibility, explicit_mask, mask_shape, reads

FLASHGEN = "flashgen"
# The block-size sweep (FlashAttention paper, Fig. 2 right): flashgen with the forward's KV
# tile set to BN keys (the planner's query tile kept), as a peer named "flashgen@kvBN", so
# that every row gets its ratio to the planner's choice.
SWEEP_PREFIX = "flashgen@kv"
# flashgen on another kernel family than the planner's (plan/tiles.py FAMILIES), as a peer
# named "flashgen/FAMILY": on Hopper, "flashgen/mma" is the mma.sync family in the same run.
FAMILY_PREFIX = "flashgen/"
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                 "efficient": "EFFICIENT_ATTENTION"}
PEERS = (*SDPA_BACKENDS, "flex", "standard")

# An explicit SDPA mask may take this share of the free GPU memory (the kernel needs the rest).
MASK_MEMORY_FRACTION = 0.25
# Standard attention runs when this many N x N tensors of the inputs' dtype fit in 90 % of
# the free memory (scores, probabilities and the reference's temporaries, forward); past
# that it could only fail, slowly. A fwd+bwd that does not fit is recorded as OOM.
STANDARD_SCORE_COPIES = 4
STANDARD_MEMORY_FRACTION = 0.9


@dataclass
class Subject:
    """One case's call, shared by every peer: q, k, v (requiring grad), the spec's
    parameters with their defaults, the layout (a built-in pattern's or the case's)."""
    op: AttentionOp
    call: BoundCall
    op_kwargs: dict            # op(q, k, v, **op_kwargs): parameters, layout, dropout_p
    visibility: Visibility
    free_bytes: int            # free GPU memory before any peer's setup


@dataclass
class Runner:
    forward: Callable[[], torch.Tensor]
    setup_ms: float | None = None       # building the mask / BlockMask, outside the timing
    setup_bytes: int = 0                # what setup left allocated


# ------------------------------------------------------------------ SDPA expressibility


def _is_score_plus_bias(spec: AttentionSpec, e: Expr) -> bool:
    """e is `score + f` (or `score - f`, nested) with f free of the score."""
    if isinstance(e, Var) and e.name == SCORE_VAR:
        return True
    if not isinstance(e, Binary) or e.op not in ("add", "sub"):
        return False

    def free(x: Expr) -> bool:
        return SCORE_VAR not in reads(spec, x)
    if e.op == "sub":
        return _is_score_plus_bias(spec, e.left) and free(e.right)
    return ((_is_score_plus_bias(spec, e.left) and free(e.right))
            or (_is_score_plus_bias(spec, e.right) and free(e.left)))


def score_change(spec: AttentionSpec) -> str:
    """"none", "additive" (score + f(indices, parameters): an SDPA float mask holds f), or
    "other" (softcap, temperature, ...: SDPA cannot express it)."""
    if spec.score is None:
        return "none"
    return "additive" if _is_score_plus_bias(spec, spec.score) else "other"


@dataclass(frozen=True)
class SdpaForm:
    is_causal: bool
    mask: str | None           # None, "bool" (the visible set) or "additive" (bias, -inf)


def sdpa_form(spec: AttentionSpec, visibility: Visibility) -> SdpaForm:
    """How scaled_dot_product_attention expresses a call: no mask when everything is
    visible, is_causal when the visible set is exactly the causal mask, else an explicit
    mask; an additive score change goes into a float mask with the visible set."""
    change = score_change(spec)
    if change == "other":
        raise NotExpressible("score change is not additive (SDPA can only add a mask)")
    if change == "additive":
        return SdpaForm(False, "additive")
    if visibility.is_dense:
        return SdpaForm(False, None)
    if visibility.is_causal:
        return SdpaForm(True, None)
    return SdpaForm(False, "bool")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _timed_setup(build: Callable[[], object], device) -> tuple[object, float, int]:
    """(what build returns, its time in ms, the bytes it left allocated)."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    value = build()
    torch.cuda.synchronize(device)
    return value, (time.perf_counter() - start) * 1e3, torch.cuda.memory_allocated(device) - before


def sdpa_runner(backend: str, subject: Subject) -> Runner:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    call = subject.call
    form = sdpa_form(call.spec, subject.visibility)
    if form.mask is not None and backend == "flash":
        raise NotExpressible("FlashAttention-2 takes no attn_mask, only is_causal")
    q, k, v = call.q, call.k, call.v
    mask = None
    setup_ms, setup_bytes = None, 0
    if form.mask is not None:
        dtype = q.dtype if form.mask == "additive" else None
        elements = math.prod(mask_shape(call, form.mask == "additive"))
        # SDPA turns a bool mask into a float one of the inputs' dtype on every call
        needed = elements * (q.element_size() + (1 if dtype is None else 0))
        if needed > MASK_MEMORY_FRACTION * subject.free_bytes:
            raise NotExpressible(f"mask too large ({_gib(needed)} > "
                                 f"{MASK_MEMORY_FRACTION:.0%} of free memory)")
        mask, setup_ms, setup_bytes = _timed_setup(lambda: explicit_mask(call, dtype), q.device)
    _, H, Hkv, _, _ = call.shape
    options = {"enable_gqa": True} if H != Hkv else {}
    chosen = getattr(SDPBackend, SDPA_BACKENDS[backend])

    def forward():
        with sdpa_kernel(chosen):
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=call.dropout_p, is_causal=form.is_causal,
                scale=call.scale, **options)
    return Runner(forward, setup_ms, setup_bytes)


# ------------------------------------------------------------------ the other peers


def flex_runner(subject: Subject) -> Runner:
    """FlexAttention, compiled (static shapes), with the BlockMask built beforehand by a
    compiled create_block_mask; its first build compiles, the second is timed."""
    from torch.nn.attention.flex_attention import flex_attention
    call = subject.call
    form = flex.translate(call)
    # Every case brings new mods: start from empty compile caches, so that neither the
    # recompile limit nor the guards of earlier cases' code weigh on this one.
    torch._dynamo.reset()
    device = call.q.device
    flex.block_mask(form, call)
    mask, setup_ms, setup_bytes = _timed_setup(lambda: flex.block_mask(form, call), device)
    compiled = torch.compile(flex_attention, dynamic=False)
    return Runner(lambda: flex.attention(compiled, form, call, mask, call.q, call.k, call.v),
                  setup_ms if mask is not None else None, setup_bytes)


def standard_runner(subject: Subject) -> Runner:
    call = subject.call
    if call.dropout_p > 0:
        raise NotExpressible("the reference draws Philox dropout with integer tensor ops, "
                             "not what standard attention's dropout costs")
    B, H, _, Nq, Nk = call.shape
    needed = STANDARD_SCORE_COPIES * B * H * Nq * Nk * call.q.element_size()
    if needed > STANDARD_MEMORY_FRACTION * subject.free_bytes:
        raise NotExpressible(f"N x N scores need ~{_gib(needed)}, "
                             f"{_gib(subject.free_bytes)} free")
    op, kwargs = subject.op, subject.op_kwargs
    return Runner(lambda: op.reference(call.q, call.k, call.v, **kwargs))


def flashgen_runner(subject: Subject) -> Runner:
    op, call, kwargs = subject.op, subject.call, subject.op_kwargs
    return Runner(lambda: op(call.q, call.k, call.v, **kwargs))


def sweep_peer(kv_block: int) -> str:
    return f"{SWEEP_PREFIX}{kv_block}"


def sweep_tiles(spec: AttentionSpec, d: int, kv_block: int, arch: str) -> TileOverride:
    """The tiles of a block-size sweep peer on `arch`: the planner's forward kernel (its
    family and query rows, so that the sweep varies the keys per tile of the kernel a call
    runs) with kv_block keys per tile. TileError where the planner refuses them (shared
    memory, a shape the kernel cannot take)."""
    from ..plan.tiles import TileOverride, check_override, plan_for
    forward = plan_for(spec, d, arch=arch).forward
    tiles = check_override(TileOverride(forward=(forward.block_m, kv_block),
                                        family=forward.kernel_family),
                           d, spec.value_dim_for(d))
    plan_for(spec, d, tiles, arch)
    return tiles


def sweep_runner(peer: str, subject: Subject) -> Runner:
    """flashgen with the forward's KV tile from the peer's name (sweep_tiles); a tile the
    planner refuses is NotExpressible."""
    from ..build.cache import device_arch
    from ..plan.tiles import TileError
    op, call, kwargs = subject.op, subject.call, subject.op_kwargs
    kv_block = int(peer[len(SWEEP_PREFIX):])
    try:
        tiles = sweep_tiles(op.spec, call.q.shape[-1], kv_block,
                            device_arch(call.q.device.index))
    except TileError as why:
        raise NotExpressible(f"forward KV tile {kv_block}: {why}") from None
    swept = AttentionOp(op.spec, op.source_path, tiles)
    return Runner(lambda: swept(call.q, call.k, call.v, **kwargs))


def family_peer(family: str) -> str:
    return f"{FAMILY_PREFIX}{family}"


def family_runner(peer: str, subject: Subject) -> Runner:
    """flashgen with its kernels from the peer's family; a family that cannot run the case
    (an arch or head dim it does not cover) is NotExpressible."""
    from ..build.cache import device_arch
    from ..plan.tiles import TileError, TileOverride, plan_for
    op, call, kwargs = subject.op, subject.call, subject.op_kwargs
    d = call.q.shape[-1]
    tiles = TileOverride(family=peer[len(FAMILY_PREFIX):])
    try:
        plan_for(op.spec, d, tiles, device_arch(call.q.device.index))
    except TileError as why:
        raise NotExpressible(str(why)) from None
    other = AttentionOp(op.spec, op.source_path, tiles)
    return Runner(lambda: other(call.q, call.k, call.v, **kwargs))


def runner(peer: str, subject: Subject) -> Runner:
    """The runner of `peer` (flashgen, one of PEERS, a sweep or a family peer) for the
    subject's case."""
    if peer == FLASHGEN:
        return flashgen_runner(subject)
    if peer.startswith(SWEEP_PREFIX):
        return sweep_runner(peer, subject)
    if peer.startswith(FAMILY_PREFIX):
        return family_runner(peer, subject)
    if peer in SDPA_BACKENDS:
        return sdpa_runner(peer, subject)
    if peer == "flex":
        return flex_runner(subject)
    if peer == "standard":
        return standard_runner(subject)
    raise ValueError(f"unknown peer {peer!r}")
