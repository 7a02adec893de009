"""Philox4x32-10 against the published known-answer vectors (Random123's kat_vectors),
and the statistics of the dropout mask it draws."""
import math

import pytest
import torch

from flashgen.reference.philox import (keep_mask, philox4x32_10, philox4x32_10_scalar,
                                       resolve_seed, threshold)

# counter (4 words), key (2 words), expected output (4 words); Random123 kat_vectors
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff),
     (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answers(counter, key, expected):
    assert philox4x32_10_scalar(counter, key) == expected
    assert tuple(int(w) for w in philox4x32_10(counter, key)) == expected


def test_vectorised_equals_scalar_on_random_counters():
    gen = torch.Generator().manual_seed(0)
    c = [torch.randint(0, 2**32, (200,), generator=gen, dtype=torch.int64) for _ in range(4)]
    key = (0x12345678, 0x9ABCDEF0)
    out = philox4x32_10(c, key)
    for i in range(200):
        want = philox4x32_10_scalar([int(x[i]) for x in c], key)
        assert tuple(int(w[i]) for w in out) == want


def test_threshold():
    assert threshold(0.0) == 0
    assert threshold(0.5) == 2**31
    assert threshold(0.999999999999) == 2**32 - 1 or threshold(0.999999999999) < 2**32
    with pytest.raises(ValueError):
        threshold(1.0)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_kept_fraction_within_4_standard_errors(p):
    mask = keep_mask(seed=2024, offset=3, p=p, batch=2, heads=4, nq=256, nk=256)
    n = mask.numel()
    se = math.sqrt(p * (1 - p) / n)
    assert abs(mask.double().mean().item() - (1 - p)) < 4 * se


def test_patterns_differ_across_seeds_batches_heads_and_offsets():
    p = 0.5
    base = keep_mask(1, 0, p, 2, 2, 64, 64)
    others = [keep_mask(2, 0, p, 2, 2, 64, 64)[0, 0], base[1, 0], base[0, 1],
              keep_mask(1, 1, p, 2, 2, 64, 64)[0, 0]]
    for other in others:
        agree = (base[0, 0] == other).double().mean().item()
        # independent fair coins agree half the time; 4 standard errors over 4096 cells
        assert abs(agree - 0.5) < 4 * 0.5 / 64


def test_mask_does_not_depend_on_the_extent_drawn():
    """The same element has the same bit whatever the sizes around it (tile independence)."""
    big = keep_mask(5, 0, 0.3, 1, 3, 100, 70)
    small = keep_mask(5, 0, 0.3, 1, 3, 37, 19)
    assert torch.equal(big[:, :, :37, :19], small)


def test_resolve_seed_forms():
    assert resolve_seed(5, "cpu") == (5, 0)
    assert resolve_seed((5, 9), "cpu") == (5, 9)
    torch.manual_seed(1)
    a = resolve_seed(None, "cpu")
    torch.manual_seed(1)
    assert resolve_seed(None, "cpu") == a
    with pytest.raises(TypeError):
        resolve_seed("x", "cpu")
