"""Ring attention on several GPUs against one GPU (run by torchrun; tests/gpu/test_ring.py
starts it):

    torchrun --nproc_per_node 2 -m tests.gpu.ring_check [--json FILE] [--bench]

Every rank draws the same whole-sequence inputs, runs op.ring on its shard with autograd,
and the gathered out, lse, dq, dk, dv and table gradients (summed over ranks) are judged
by the GPU oracle against the float64 reference (tests/gpu/oracle.py: within twice the
error of the reference in the input dtype); the one-GPU kernels' result on the whole
sequence is reported beside it. --bench times op.ring against op on one GPU."""
from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

import flashgen
from flashgen.runtime.examples import example_inputs
from flashgen.runtime.ring import shard, unshard

from .oracle import DTYPES, bound, cancellation_floor, error, parameter_floors, run

# spec, dtype, d, B, H, Hkv, N, zigzag, dropout_p
CASES = [
    ("causal", "bf16", 128, 1, 8, 2, 4096, True, 0.0),
    ("causal", "fp16", 64, 2, 4, 4, 2048, False, 0.0),
    ("alibi", "bf16", 64, 1, 4, 2, 2048, True, 0.0),
    ("document", "fp16", 64, 2, 4, 2, 2048, True, 0.0),
    ("sliding_window", "bf16", 128, 1, 4, 4, 4096, False, 0.0),
    ("dropout_causal", "bf16", 64, 1, 4, 4, 2048, True, 0.2),
    ("bigbird", "bf16", 64, 1, 4, 4, 2048, True, 0.0),
    ("softcap", "bf16", 128, 1, 4, 2, 2048, True, 0.0),
    ("dense", "bf16", 128, 1, 4, 4, 2048, True, 0.0),
]


def check(case, rank, world, seed=0) -> dict | None:
    spec, dtype, d, B, H, Hkv, N, zigzag, p = case
    op = flashgen.compile(spec)
    dt = DTYPES[dtype]
    gen = torch.Generator().manual_seed(seed + N)
    q, k, v, params, layout = example_inputs(op.spec, B, H, Hkv, N, N, head_dim=d,
                                             dtype=torch.float64, device="cuda", generator=gen)
    dout = torch.randn(B, H, N, v.shape[-1], generator=gen, dtype=torch.float64).cuda()
    q, k, v, dout = (t.to(dt).double() for t in (q, k, v, dout))
    params = {n: (t.float().double() if isinstance(t, torch.Tensor) and t.is_floating_point()
                  else t) for n, t in params.items()}
    call = {}
    if p:
        call.update(dropout_p=p, seed=(seed + 11, 5))
    if layout is not None:
        call["layout"] = layout

    def mine(t):
        return shard(t, rank, world, zigzag=zigzag)
    local = [mine(t.to(dt)).requires_grad_() for t in (q, k, v)]
    tables = {n: (t.float().requires_grad_() if isinstance(t, torch.Tensor)
                  and t.is_floating_point() else t) for n, t in params.items()}
    out, lse = op.ring(*local, zigzag=zigzag, return_lse=True, **call, **tables)
    (out.double() * mine(dout)).sum().backward()
    got = {"out": unshard(out.detach(), dim=2, zigzag=zigzag),
           "lse": unshard(lse.detach(), dim=2, zigzag=zigzag)}
    for name, t in zip(("dq", "dk", "dv"), local):
        got[name] = unshard(t.grad, dim=2, zigzag=zigzag)
    for n, t in tables.items():
        if isinstance(t, torch.Tensor) and t.requires_grad:
            dist.all_reduce(t.grad)          # each rank's share
            got[f"d{n}"] = t.grad
    if rank != 0:
        return None

    ref64 = run(op, q, k, v, dout, params, torch.float64, **call)
    low = run(op, q, k, v, dout, params, dt, **call)
    one = run(op, q.to(dt), k.to(dt), v.to(dt), dout.to(dt), params, kernel=True, **call)
    floor = cancellation_floor(q, k, v, dout)
    floors = parameter_floors(op, q, k, v, dout, params, seed, **call)
    row = {"case": f"{spec} {dtype} d{d} B{B} H{H}/{Hkv} N{N} {'zigzag' if zigzag else 'contiguous'}"
                   + (f" p={p}" if p else ""), "failures": []}
    for what, ref in ref64.items():
        g = got[what]
        if torch.isnan(g).any():
            row["failures"].append(f"{what}: NaN")
            continue
        limit = bound(low[what], ref, 0.0 if what in ("out", "lse")
                      else max(floor, floors.get(what, 0.0)))
        try:
            err, err_one = error(g, ref), error(one[what], ref)
        except AssertionError as e:
            row["failures"].append(f"{what}: {e}")
            continue
        row[what] = round(err / limit, 3)           # ring's error / bound
        row[f"{what} 1gpu"] = round(err_one / limit, 3)
        if not err <= limit:
            row["failures"].append(f"{what}: max error {err:.3g} > bound {limit:.3g}")
    return row


def bench(rank, world, lengths=(16384, 65536, 131072), H=16, d=128) -> list[dict]:
    """Causal bf16: op.ring over the group vs op on one GPU, median ms of events-timed runs."""
    op = flashgen.compile("causal")
    rows = []
    for N in lengths:
        gen = torch.Generator().manual_seed(N)
        q, k, v = (torch.randn(1, H, N, d, generator=gen).to("cuda", torch.bfloat16)
                   for _ in range(3))
        local = [shard(t, rank, world).requires_grad_() for t in (q, k, v)]
        whole = [t.clone().requires_grad_() for t in (q, k, v)]
        dout_local = torch.randn_like(local[0])
        dout = torch.randn_like(q)

        def timed(fn, reps=5):
            times = []
            for i in range(reps + 2):
                dist.barrier()
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                if i >= 2:
                    times.append(start.elapsed_time(end))
            t = torch.tensor(sorted(times)[len(times) // 2], device="cuda")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)   # the slowest rank's
            return t.item()

        row = {"N": N}
        with torch.no_grad():
            row["ring fwd"] = timed(lambda: op.ring(*local))
        row["ring f+b"] = timed(lambda: op.ring(*local).backward(dout_local))
        torch.cuda.reset_peak_memory_stats()
        op.ring(*local).backward(dout_local)
        row["ring peak GiB"] = torch.cuda.max_memory_allocated() / 2**30
        with torch.no_grad():
            row["1gpu fwd"] = timed(lambda: op(*whole))
        row["1gpu f+b"] = timed(lambda: op(*whole).backward(dout))
        torch.cuda.reset_peak_memory_stats()
        op(*whole).backward(dout)
        row["1gpu peak GiB"] = torch.cuda.max_memory_allocated() / 2**30
        rows.append(row)
        del q, k, v, local, whole
        torch.cuda.empty_cache()
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--bench", action="store_true")
    parser.add_argument("--only", help="a substring of the case's spec name")
    args = parser.parse_args()
    rank = int(os.environ["RANK"])
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    os.environ.setdefault("FLASHGEN_POISON", "1")
    dist.init_process_group("nccl")
    world = dist.get_world_size()
    rows, timings = [], []
    try:
        for case in CASES:
            if args.only and args.only not in case[0]:
                continue
            try:
                row = check(case, rank, world)
            except Exception as e:     # report, and keep the ranks in step
                row = {"case": case[0], "failures": [f"{type(e).__name__}: {e}"]}
                if rank == 0:
                    raise
            if rank == 0:
                rows.append(row)
                print(("FAIL " if row["failures"] else "ok   ") + json.dumps(row), flush=True)
        if args.bench:
            timings = bench(rank, world)
            if rank == 0:
                for t in timings:
                    print("bench " + json.dumps({k: round(v, 3) for k, v in t.items()}), flush=True)
    finally:
        if rank == 0 and args.json:
            with open(args.json, "w") as f:
                json.dump({"world": world, "gpu": torch.cuda.get_device_name(),
                           "checks": rows, "bench": timings}, f, indent=1)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
