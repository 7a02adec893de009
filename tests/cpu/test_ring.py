"""Ring attention's protocol (flashgen/runtime/ring.py) on CPU processes over gloo: each
rank runs op.reference_ring on its shard, in float64, and the gathered out, lse and
gradients must equal the one-process reference on the whole sequence. Also the shard
layout, the pairs a causal mask hides, argument errors, and frames in the compiled mask."""
import os
import queue
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import flashgen
from flashgen.plan.tile_map import mask_values
from flashgen.reference.attention import grid_variables
from flashgen.reference.evaluate import Evaluator
from flashgen.runtime.arguments import Frame
from flashgen.runtime.ring import Sharding, _hidden_by_mask, shard

# spec, B, H, Hkv, d, length, world, zigzag, params, dropout_p
CASES = [
    ("causal", 1, 2, 2, 64, 128, 2, True, {}, 0.0),
    ("causal", 2, 2, 1, 64, 96, 3, False, {}, 0.0),
    ("alibi", 1, 2, 1, 64, 192, 3, True, {"slopes": "learned"}, 0.0),
    ("document", 2, 2, 2, 64, 128, 2, True, {"doc": "docs"}, 0.0),
    ("sliding_window", 1, 1, 1, 64, 128, 2, True, {"window": 40}, 0.0),
    ("dropout_causal", 1, 2, 2, 64, 128, 2, True, {}, 0.3),
    ("bigbird", 1, 2, 2, 64, 256, 2, True, {}, 0.0),
    ("causal_bottom_right", 1, 1, 1, 64, 64, 2, False, {}, 0.0),
]


def _inputs(case):
    spec, B, H, Hkv, d, n, world, zigzag, params, p = case
    gen = torch.Generator().manual_seed(n + world)
    q = torch.randn(B, H, n, d, generator=gen, dtype=torch.float64)
    k = torch.randn(B, Hkv, n, d, generator=gen, dtype=torch.float64)
    v = torch.randn(B, Hkv, n, d, generator=gen, dtype=torch.float64)
    dout = torch.randn(B, H, n, d, generator=gen, dtype=torch.float64)
    dlse = torch.randn(B, H, n, generator=gen, dtype=torch.float64)
    values = {}
    for name, kind in params.items():
        if kind == "learned":
            values[name] = torch.rand(H, generator=gen, dtype=torch.float64)
        elif kind == "docs":      # documents that cross chunk boundaries
            values[name] = (torch.arange(n).expand(B, n) * torch.tensor([[3], [5]])[:B] // n
                            ).to(torch.int32).contiguous()
        else:
            values[name] = kind
    return q, k, v, dout, dlse, values


def _worker(rank, world, port, case, results):
    # loopback only: gloo would otherwise pick an interface from the host name
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        spec, *_, zigzag, _, p = case
        op = flashgen.compile(spec)
        q, k, v, dout, dlse, params = _inputs(case)
        local = [shard(t, rank, world, zigzag=zigzag).requires_grad_() for t in (q, k, v)]
        tables = {n: t.clone().requires_grad_() if isinstance(t, torch.Tensor)
                  and t.is_floating_point() else t for n, t in params.items()}
        out, lse = op.reference_ring(*local, zigzag=zigzag, return_lse=True, dropout_p=p,
                                     seed=(7, 3) if p else None, **tables)
        loss = (out * shard(dout, rank, world, zigzag=zigzag)).sum() \
            + (lse * shard(dlse, rank, world, 2, zigzag)).sum()
        loss.backward()
        from flashgen.runtime.ring import unshard
        got = [unshard(t.detach(), dim=2, zigzag=zigzag) for t in (out, lse)]
        got += [unshard(t.grad, dim=2, zigzag=zigzag) for t in local]
        for t in tables.values():        # each rank's share of a table's gradient
            if isinstance(t, torch.Tensor) and t.requires_grad:
                dist.all_reduce(t.grad)
                got.append(t.grad)
        if rank == 0:   # numpy arrays travel by value: a tensor would travel as a shared-
            # memory handle that this process must outlive (it sometimes did not: CI saw
            # "Connection reset by peer" in the parent's get)
            results.put([g.numpy() for g in got])
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-w{c[6]}-{'zz' if c[7] else 'cont'}")
def test_ring_protocol_matches_one_process(case):
    spec, *_, world, zigzag, _, p = case
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, case, results))
             for r in range(world)]
    for proc in procs:
        proc.start()
    got = None
    while got is None:          # fail as soon as a rank does, not at a timeout
        try:
            got = results.get(timeout=1)
        except queue.Empty:
            assert all(proc.exitcode in (None, 0) for proc in procs), "a rank failed"
            assert any(proc.is_alive() for proc in procs), "no rank sent results"
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    got = [torch.from_numpy(g) for g in got]

    op = flashgen.compile(spec)
    q, k, v, dout, dlse, params = _inputs(case)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    tables = {n: t.clone().requires_grad_() if isinstance(t, torch.Tensor)
              and t.is_floating_point() else t for n, t in params.items()}
    out, lse = op.reference(*leaves, return_lse=True, dropout_p=p, seed=(7, 3) if p else None,
                            **tables)
    ((out * dout).sum() + (torch.where(torch.isfinite(lse), lse, 0) * dlse).sum()).backward()
    want = [out.detach(), lse.detach(), *(t.grad for t in leaves),
            *(t.grad for t in tables.values() if isinstance(t, torch.Tensor) and t.requires_grad)]
    names = ["out", "lse", "dq", "dk", "dv", "dtable"]
    assert len(got) == len(want)
    for name, g, w in zip(names, got, want):
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-9), (name, (g - w).abs().max())


def test_shard_layouts():
    s = Sharding(2, 128, zigzag=True)
    assert s.chunks == 4 and s.chunk == 32 and s.held_by(0) == (0, 3) and s.held_by(1) == (1, 2)
    x = torch.arange(128).view(1, 1, 128, 1)
    assert shard(x, 0, 2).flatten().tolist() == [*range(32), *range(96, 128)]
    assert shard(x, 1, 2).flatten().tolist() == list(range(32, 96))
    assert shard(x, 0, 2, zigzag=False).flatten().tolist() == list(range(64))
    with pytest.raises(flashgen.ArgumentError, match="multiple of 64"):
        shard(torch.zeros(1, 1, 100, 1), 0, 2)


@pytest.mark.nvcc
def test_causal_zigzag_pairs_hidden_by_the_mask():
    """Causal, zigzag over 2 ranks: 4 chunks, chunk i sees chunks <= i; the hidden pairs
    are those with key chunk > query chunk, from the compiled tile_class with frames."""
    op = flashgen.compile("causal")
    hidden = _hidden_by_mask(op.key, Sharding(2, 256, True), (), 1, 1)
    assert hidden == {(i, j) for i in range(4) for j in range(4) if j > i}
    op = flashgen.compile("sliding_window")
    hidden = _hidden_by_mask(op.key, Sharding(2, 256, True), (64,), 1, 1)
    # a window of 64 reaches back at most one 64-row chunk
    assert (1, 0) not in hidden and (2, 0) in hidden and (0, 1) in hidden


@pytest.mark.nvcc
@pytest.mark.parametrize("spec,params", [("causal_bottom_right", {}), ("prefix_lm", {"prefix": 40}),
                                         ("document", {"doc": "docs"})])
def test_framed_mask_is_the_reference_at_global_indices(spec, params):
    """The compiled FramedVariant's mask with a frame equals the reference's mask at the
    frame's global indices and lengths."""
    s = flashgen.load(spec)
    values = {}
    for name, kind in params.items():
        values[name] = (torch.arange(96).view(1, 96) // 30).to(torch.int32) if kind == "docs" \
            else kind
    frame = Frame(q_first=48, kv_first=16, q_extra=96 - 32, kv_extra=96 - 24)
    got = mask_values(s, values, 1, 1, 32, 24, frame)
    ev = Evaluator(s, grid_variables(1, 1, 32, 24, "cpu", frame), values, torch.float64, "cpu")
    want = ev(s.mask).expand(1, 1, 32, 24)
    assert torch.equal(got, want)


def test_ring_argument_errors():
    op = flashgen.compile("causal")
    q = torch.zeros(1, 1, 64, 16, dtype=torch.float64)
    from flashgen.runtime.arguments import bind_shards
    with pytest.raises(flashgen.ArgumentError, match="same rows"):
        bind_shards(op.spec, q, q[:, :, :32], q[:, :, :32], 128)
    with pytest.raises(flashgen.ArgumentError, match="init_process_group"):
        op.reference_ring(q, q, q)
