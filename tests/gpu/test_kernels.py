"""The generated kernels against the spec's reference, on a GPU, through the oracle of
oracle.py (for out, lse, dq, dk, dv and parameter gradients, max |kernel - ref64| <=
2 * max |ref_lowp - ref64| + floor; fresh inputs, poisoned outputs, NaN never passes).
Modules build in parallel into one cache before the cases run."""
import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import flashgen
from flashgen.runtime import launch

from .oracle import DTYPES, compare

pytestmark = pytest.mark.gpu

HEAD_DIMS = (16, 32, 64, 96, 128, 192, 256)
SHAPES = [(1, 1), (1, 4096), (97, 203), (128, 128), (1000, 1000), (2048, 4096)]


def _kernel_specs():
    return [n for n in flashgen.shipped()
            if not flashgen.load(n).dropout and flashgen.load(n).block_sparse is None]


# specs of the dropout / block-sparse cases that nothing shipped combines (spec text)
TEST_SPECS = {
    "dropout_dense": "attention dropout_dense { head_dim = 64  dropout }",
    "alibi_butterfly_dropout": """attention alibi_butterfly_dropout {
        head_dim = 64, 128
        param slopes: f32[H]
        mask = causal
        score = score + slopes[h] * (kv_idx - q_idx)
        block_sparse = butterfly(block = 64)
        dropout
    }""",
    "softcap_bigbird": """attention softcap_bigbird {
        head_dim = 128
        score = 30.0 * tanh(score / 30.0)
        block_sparse = bigbird(block = 128, window = 1, global = 1, random = 2, seed = 7)
    }""",
    "alibi_bigbird": """attention alibi_bigbird {
        head_dim = 64
        param slopes: f32[H]
        score = score + slopes[h] * (kv_idx - q_idx)
        block_sparse = bigbird(block = 64, window = 1, global = 1, random = 3, seed = 1)
    }""",
    # a window narrower than a tile: its edge tiles show one consumer's 64 rows the first
    # key half, the second, or none (PERF.md: half steps, branch `half-steps`, not kept)
    "narrow_window": """attention narrow_window {
        head_dim = 64, 128
        param window: i32 = 100
        mask = sliding_window(window)
        dropout
    }""",
    # analysis/affine.py: a bias affine in kv_idx whose step is a select and whose row
    # part reads a table, under a band mask (partial tiles, rows with nothing visible)
    "affine_bias": """attention affine_bias {
        head_dim = 64, 128
        scale = 0.07
        param slopes: f32[H]
        param bias: f32[H, 4]
        mask = q_idx - kv_idx < 300 && kv_idx - q_idx < 200 && q_idx % 97 != 5
        score = score - (if h > 1 then slopes[h] else -0.5) * (q_idx - kv_idx) / 4.0 + bias[h, q_idx % 4]
    }""",
    # a bias affine in q_idx as well as kv_idx, whose step along each varies with the
    # other index (the sm90 backward's kAffineBiasQ; a select on h in it), under a band
    "affine_bias_q": """attention affine_bias_q {
        head_dim = 64, 128
        scale = 0.07
        param slopes: f32[H]
        mask = q_idx - kv_idx < 300 && kv_idx - q_idx < 200
        score = score + (if h > 1 then slopes[h] else -0.5) * (kv_idx - 2 * q_idx) / 4.0 + 0.00002 * kv_idx * q_idx
    }""",
    # d = 256's sm90 backward (the consumers split the head dim): an affine bias with a
    # learned table, dropout, and a block pattern
    "wide_alibi_dropout": """attention wide_alibi_dropout {
        head_dim = 256
        param slopes: f32[H]
        mask = causal
        score = score + slopes[h] * (kv_idx - q_idx)
        dropout
    }""",
    "wide_bigbird": """attention wide_bigbird {
        head_dim = 256
        score = 30.0 * tanh(score / 30.0)
        block_sparse = bigbird(block = 64, window = 1, global = 1, random = 2, seed = 3)
    }""",
    "small_blocks": """attention small_blocks {
        head_dim = 64
        mask = causal
        block_sparse = layout(block_q = 16, block_k = 32)
        dropout
    }""",
}


def compile_case(name, forward_tile=None, backward_tile=None):
    return flashgen.compile(TEST_SPECS.get(name, name), forward_tile=forward_tile,
                            backward_tile=backward_tile)


def _needs_square(name):
    return any(d.symbol == "N" for p in flashgen.load(name).params if p.is_tensor for d in p.shape)


# (spec, dtype, head dim, B, Hq, Hkv, Nq, Nk, strided views)
CASES = []
for _name in _kernel_specs():
    _spec = flashgen.load(_name)
    _n = (300, 300) if _needs_square(_name) else (97, 203)
    CASES.append((_name, _spec.dtypes[0], _spec.head_dims[-1], 2, 4, 2) + _n + (False,))
for _name in ("causal", "dense"):
    for _dt in DTYPES:
        for _d in HEAD_DIMS:
            CASES.append((_name, _dt, _d, 2, 3, 3, 190, 190, False))
    for _nq, _nk in SHAPES:
        CASES.append((_name, "bf16", 64, 1, 2, 1, _nq, _nk, False))
for _hq, _hkv in ((8, 2), (8, 1)):
    CASES.append(("causal", "fp16", 128, 2, _hq, _hkv, 333, 333, False))
CASES.append(("causal", "bf16", 128, 2, 4, 2, 257, 257, True))
CASES.append(("alibi", "fp16", 64, 2, 4, 4, 200, 300, True))
CASES.append(("affine_bias", "bf16", 128, 2, 4, 2, 333, 517, False))
CASES.append(("affine_bias", "fp16", 64, 1, 4, 4, 700, 700, False))

# The sm90 backward takes a bias affine in q_idx once per key and tile (kAffineBiasQ) only
# where no table wants a gradient, which the cases above always ask for: these do not.
AFFINE_NO_TABLE_GRADS = [("alibi", "bf16", 128, 2, 4, 4, 300, 517, False),
                         ("alibi", "fp16", 64, 1, 4, 4, 700, 700, False),
                         ("affine_bias_q", "bf16", 128, 2, 4, 2, 333, 517, False),
                         ("affine_bias_q", "fp16", 64, 1, 4, 4, 700, 700, False),
                         ("wide_alibi_dropout", "bf16", 256, 2, 4, 2, 333, 517, False)]

REPORT = []


@pytest.fixture(scope="session", autouse=True)
def built_modules():
    """Every module the cases use, built in parallel (one nvcc per core)."""
    arch = launch._arch(torch.cuda.current_device())
    todo = {(compile_case(c[0]).key, DTYPES[c[1]], c[2])
            for c in CASES + DETERMINISTIC + EXTRA + AFFINE_NO_TABLE_GRADS}
    todo |= {(compile_case(c[0], c[-1].get("forward_tile"), c[-1].get("backward_tile")).key,
              DTYPES[c[1]], c[2]) for c in EXTRA if {"forward_tile", "backward_tile"} & set(c[-1])}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as pool:
        built = list(pool.map(lambda t: launch.module(*t, arch), sorted(todo, key=str)))
    print(f"\n{len(built)} modules, {sum(not m.cached for m in built)} built, "
          f"longest {max(m.seconds for m in built):.1f} s")
    yield
    path = os.environ.get("FLASHGEN_TEST_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(REPORT, f, indent=1)


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setenv("FLASHGEN_POISON", "1")


def check(name, dtype, d, B, Hq, Hkv, Nq, Nk, strided, deterministic=False, dropout_p=0.0,
          shared_layout=False, scale=None, forward_tile=None, backward_tile=None,
          param_grads=True):
    op = compile_case(name, forward_tile, backward_tile)
    label = (f"{name} {dtype} d{d} B{B} H{Hq}:{Hkv} {Nq}x{Nk}{' strided' if strided else ''}"
             f"{' deterministic' if deterministic else ''}"
             f"{f' p={dropout_p}' if dropout_p else ''}{' shared layout' if shared_layout else ''}"
             f"{f' scale={scale}' if scale is not None else ''}"
             f"{' forward tile {}x{}'.format(*forward_tile) if forward_tile else ''}"
             f"{' backward tile {}x{} {} warps'.format(*backward_tile) if backward_tile else ''}"
             f"{'' if param_grads else ' no table gradients'}")
    seed = zlib.crc32(repr((name, dtype, d, B, Hq, Hkv, Nq, Nk, strided, dropout_p)).encode())
    row = compare(op, dtype, d, B, Hq, Hkv, Nq, Nk, seed, label, strided=strided,
                  deterministic=deterministic, dropout_p=dropout_p, shared_layout=shared_layout,
                  scale=scale, param_grads=param_grads)
    REPORT.append(row)
    assert not row["failures"], "; ".join(row["failures"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_kernel_matches_reference(case):
    check(*case)


@pytest.mark.parametrize("case", AFFINE_NO_TABLE_GRADS, ids=lambda c: "-".join(map(str, c)))
def test_affine_bias_backward_without_table_gradients(case):
    check(*case, param_grads=False)


DETERMINISTIC = [("causal", "bf16", 64, 1, 4, 2, 1000, 1000, False),
                 ("t5_bias", "fp16", 64, 2, 4, 2, 97, 203, False),
                 ("softcap", "bf16", 256, 1, 2, 2, 300, 300, False),
                 ("dense", "fp16", 16, 1, 2, 1, 1, 4096, False)]


@pytest.mark.parametrize("case", DETERMINISTIC, ids=lambda c: "-".join(map(str, c)))
def test_deterministic_backward_matches_reference(case):
    check(*case, deterministic=True)


# dropout and block-sparse (issue 4): (case, keyword arguments of check)
EXTRA = [
    ("dropout_causal", "fp16", 64, 2, 4, 2, 97, 203, False, dict(dropout_p=0.1)),
    ("dropout_causal", "bf16", 128, 1, 8, 1, 1000, 1000, False, dict(dropout_p=0.5)),
    ("dropout_causal", "bf16", 64, 2, 2, 2, 333, 333, True, dict(dropout_p=0.5)),
    ("dropout_dense", "fp16", 64, 1, 3, 3, 1, 4096, False, dict(dropout_p=0.1)),
    ("dropout_causal", "fp16", 128, 1, 4, 2, 300, 300, False,
     dict(dropout_p=0.1, deterministic=True)),
    ("butterfly_causal", "bf16", 64, 2, 4, 2, 1000, 1000, False, {}),
    ("butterfly_causal", "fp16", 128, 1, 2, 1, 700, 1300, False, {}),
    ("bigbird", "fp16", 64, 2, 4, 2, 97, 203, False, {}),
    ("bigbird", "bf16", 64, 1, 2, 2, 900, 1100, False, {}),
    ("strided_causal", "bf16", 64, 1, 4, 4, 513, 513, False, {}),
    ("block_layout", "fp16", 128, 2, 4, 2, 300, 700, False, {}),
    ("block_layout", "bf16", 64, 1, 4, 1, 1000, 1000, False, dict(shared_layout=True)),
    ("block_layout", "fp16", 64, 1, 2, 2, 600, 600, False, dict(deterministic=True)),
    ("alibi_butterfly_dropout", "fp16", 64, 2, 4, 2, 500, 500, False, dict(dropout_p=0.1)),
    ("alibi_butterfly_dropout", "bf16", 128, 1, 4, 4, 257, 1000, False, dict(dropout_p=0.5)),
    ("softcap_bigbird", "bf16", 128, 1, 2, 1, 1000, 1000, False, {}),
    ("alibi_bigbird", "fp16", 64, 2, 4, 2, 777, 1500, False, {}),
    ("small_blocks", "fp16", 64, 2, 2, 1, 200, 333, False, dict(dropout_p=0.1)),
    ("small_blocks", "bf16", 64, 1, 2, 2, 500, 500, False,
     dict(dropout_p=0.5, deterministic=True)),
    # the softmax takes the scale in its exponent: negative and zero scales, with and
    # without a score expression
    ("causal", "bf16", 64, 2, 4, 2, 300, 500, False, dict(scale=-0.125)),
    ("sliding_window", "fp16", 128, 1, 2, 2, 97, 1000, False, dict(scale=0.0)),
    ("alibi", "fp16", 64, 1, 4, 4, 333, 333, False, dict(scale=-0.1)),
    # hand-picked forward tiles (the benchmark's block-size sweep)
    ("causal", "bf16", 64, 1, 4, 2, 1000, 1000, False, dict(forward_tile=(64, 32))),
    ("softcap", "fp16", 128, 2, 2, 2, 777, 500, False, dict(forward_tile=(128, 128))),
    ("alibi", "fp16", 128, 2, 2, 2, 777, 500, False, {}),
    ("block_layout", "bf16", 64, 1, 4, 1, 1000, 1000, False, dict(forward_tile=(64, 256))),
    ("causal", "bf16", 64, 2, 4, 2, 1000, 1000, False, dict(backward_tile=(128, 128, 8))),
    ("alibi", "fp16", 128, 1, 4, 4, 700, 900, False, dict(backward_tile=(64, 128, 8))),
    ("block_layout", "bf16", 128, 1, 4, 2, 1000, 1000, False,
     dict(backward_tile=(64, 128, 8), deterministic=True)),
    ("dropout_causal", "bf16", 64, 1, 4, 2, 600, 600, False,
     dict(backward_tile=(64, 128, 8), dropout_p=0.1)),
    # d = 256 (backward_sm90_split.cuh): dropout, parameter gradients, GQA, strided views,
    # block-sparse, deterministic dQ
    ("wide_alibi_dropout", "bf16", 256, 2, 4, 2, 1000, 1000, False, dict(dropout_p=0.1)),
    ("wide_alibi_dropout", "fp16", 256, 1, 4, 4, 333, 517, False, {}),
    ("wide_alibi_dropout", "fp16", 256, 1, 2, 2, 300, 300, False,
     dict(dropout_p=0.5, deterministic=True)),
    ("wide_bigbird", "bf16", 256, 1, 2, 1, 1000, 1000, False, {}),
    ("causal", "fp16", 256, 2, 8, 2, 1000, 1000, True, {}),
    # edge tiles (narrow_window above): plain, with dropout, GQA, and under a score with
    # table gradients (the forward's exact-P instance) at ALiBi's window of 512
    ("narrow_window", "bf16", 128, 2, 4, 2, 1000, 1000, False, {}),
    ("narrow_window", "fp16", 64, 1, 4, 4, 777, 900, False, {}),
    ("narrow_window", "bf16", 128, 1, 4, 1, 1000, 1000, False, dict(dropout_p=0.1)),
    ("narrow_window", "fp16", 64, 2, 2, 2, 500, 500, False, dict(dropout_p=0.5)),
    ("alibi_window_softcap", "bf16", 128, 1, 4, 4, 1500, 1500, False, {}),
    ("alibi_window_softcap", "bf16", 64, 1, 4, 2, 1500, 1500, False, {}),
    # a data-dependent mask's tile lists, built per call (runtime/launch.py _mask_tiles)
    ("document", "bf16", 64, 2, 4, 2, 1000, 1000, False, {}),
    ("document", "fp16", 128, 1, 4, 1, 2048, 2048, True, {}),
    ("document", "bf16", 128, 2, 2, 2, 1000, 1000, False, dict(deterministic=True)),
]


@pytest.mark.parametrize(
    "case", EXTRA,
    ids=lambda c: "-".join(map(str, c[:-1])) + "-" + "-".join(f"{k}={v}" for k, v in c[-1].items()))
def test_dropout_and_block_sparse_match_reference(case):
    check(*case[:-1], **case[-1])


def test_deterministic_backward_is_bit_identical():
    op = flashgen.compile("causal")
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 8, 1500, 128, generator=gen).cuda().half() for _ in range(3))
    k, v = k[:, :2], v[:, :2]
    dout = torch.randn(2, 8, 1500, 128, generator=gen).cuda().half()

    def grads(deterministic):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        op(*leaves, deterministic=deterministic).backward(dout)
        return [t.grad for t in leaves]
    first, second = grads(True), grads(True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    atomics = grads(False)
    for a, b in zip(first, atomics):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)


def test_torch_compile_fullgraph_has_no_graph_break():
    op = flashgen.compile("alibi")
    q, k, v = (torch.randn(2, 4, 128, 64, device="cuda", dtype=torch.float16, requires_grad=True)
               for _ in range(3))
    slopes = torch.rand(4, device="cuda", requires_grad=True)

    def model(q, k, v, slopes):
        return op(q * 2, k, v, slopes=slopes).float().square().sum()

    compiled = torch.compile(model, fullgraph=True)
    loss = compiled(q, k, v, slopes)
    loss.backward()
    grads = [t.grad.clone() for t in (q, k, v, slopes)]
    for t in (q, k, v, slopes):
        t.grad = None
    eager = model(q, k, v, slopes)
    eager.backward()
    torch.testing.assert_close(loss, eager)
    for a, t in zip(grads, (q, k, v, slopes)):
        torch.testing.assert_close(a, t.grad, rtol=2e-2, atol=2e-3)


def test_bad_tensor_message_before_launch():
    op = flashgen.compile("causal")
    q = torch.randn(1, 2, 16, 64, device="cuda", dtype=torch.float32)
    with pytest.raises(ValueError, match="built for fp16, bf16"):
        op(q, q, q)


def test_mask_tile_lists_follow_in_place_edits():
    """The document mask's tile lists are kept on its `doc` tensor: editing it in place
    must rebuild them (one document, then two)."""
    op = flashgen.compile("document")
    q, k, v = (torch.randn(1, 2, 1024, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    doc = torch.zeros(1, 1024, dtype=torch.int32, device="cuda")
    one_document = op(q, k, v, doc=doc)
    doc[:, 512:] = 1
    two_documents = op(q, k, v, doc=doc)
    fresh = op(q, k, v, doc=doc.clone())          # a new tensor: lists built anew
    assert torch.equal(two_documents, fresh)
    assert not torch.equal(one_document[:, :, 512:], two_documents[:, :, 512:])
    assert torch.equal(one_document[:, :, :512], two_documents[:, :, :512])
