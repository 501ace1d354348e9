"""Checks for exercise 5, with ``dsf.recurrent`` of the Miras memory ("matrix", "l2", "l2", "gd") as the oracle."""

from __future__ import annotations

import torch

import dsf
from dsf.zoo.memory import memory_spec

from .._checking import Case, assert_close, float64_tensor, for_all_cases, without_dsf

TITLE = "Exercise 5: a memory that learns at test time"
FUNCTION = "memory_recurrence"

SPEC = memory_spec("matrix", "l2", "l2", "gd")


def _inputs(case: Case) -> dict:
    """The spec's random inputs, with keys of lengths 0.5 to 1.5: its own are unit vectors, which a
    solution that normalised k (as DeltaNet layers do) would pass unnoticed."""
    x = dsf.random_inputs(SPEC, case.B, case.T, case.H, case.K, case.V, seed=case.seed)
    gen = torch.Generator().manual_seed(case.seed + 1)
    x["k"] = x["k"] * (0.5 + torch.rand(*x["k"].shape[:3], 1, generator=gen, dtype=torch.float64))
    return x


def _call(fn, x: dict, scale):
    names = ("q", "k", "v", "g", "theta")
    copies = [x[n].clone() for n in names]
    result = fn(*copies, scale=scale)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise AssertionError(f"return a pair (o, S), got {type(result).__name__}")
    if not all(torch.equal(c, x[n]) for c, n in zip(copies, names)):
        raise AssertionError("an input was modified in place: work on new tensors")
    return float64_tensor("o", result[0]), float64_tensor("S", result[1])


def check_shapes(fn):
    """returns (o [B, T, H, V], S [B, H, K, V]) in float64, inputs unchanged"""
    o, S = _call(fn, _inputs(Case(2, 6, 3, 4, 5, seed=0, scale=None)), None)
    for name, got, want in (("o", o, (2, 6, 3, 5)), ("S", S, (2, 3, 4, 5))):
        if tuple(got.shape) != want:
            raise AssertionError(f"{name} should have shape {list(want)}, got {list(got.shape)}")


def check_one_token(fn):
    """one token: S₁ = θ k vᵀ and o₁ = S₁ᵀ (s q)"""
    case = Case(2, 1, 2, 3, 4, seed=3, scale=0.7)
    x = _inputs(case)
    o, S = _call(fn, x, case.scale)
    k, v, th = x["k"][:, 0], x["v"][:, 0], x["theta"][:, 0, :, None, None]
    S1 = th * k[..., :, None] * v[..., None, :]
    assert_close("S (one token)", S, S1)
    assert_close("o (one token)", o[:, 0], torch.einsum("bhk,bhkv->bhv", case.scale * x["q"][:, 0], S1))


def check_outputs_and_memory(fn):
    """the outputs and the final memory agree with dsf.recurrent of the Miras memory"""
    def body(case):
        x = _inputs(case)
        o, S = _call(fn, x, case.scale)
        o_ref, S_ref = dsf.recurrent(SPEC, **x, scale=case.scale)
        try:
            assert_close("o", o, o_ref)
            assert_close("S (final memory)", S, S_ref.weights[0])
        except AssertionError as err:
            o_ret, _ = dsf.recurrent(SPEC, **x, scale=case.scale, grad_at="retained")
            if torch.allclose(o, o_ret, rtol=1e-8, atol=1e-10):
                raise AssertionError(f"{err}\n(your outputs are those of the gradient taken at the retained "
                                     "memory α_t S_{t−1}, Gated DeltaNet's order: take it at S_{t−1})") from None
            raise
    for_all_cases(body)


def check_it_is_the_delta_rule(fn):
    """with no forgetting (g = 0) it is DeltaNet with β = θ"""
    def body(case):
        x = _inputs(case)
        x["g"] = torch.zeros_like(x["g"])
        o, S = _call(fn, x, case.scale)
        o_ref, S_ref = dsf.recurrent("deltanet", q=x["q"], k=x["k"], v=x["v"], beta=x["theta"], scale=case.scale)
        assert_close("o (g = 0, against DeltaNet)", o, o_ref)
        assert_close("S (g = 0, against DeltaNet)", S, S_ref)
    for_all_cases(body)


def check_written_with_torch(fn):
    """is written with torch, not by calling dsf (the checks' answer key)"""
    x = _inputs(Case(1, 4, 2, 3, 2, seed=0, scale=None))
    without_dsf(fn, lambda: _call(fn, x, None))


CHECKS = [check_shapes, check_one_token, check_outputs_and_memory, check_it_is_the_delta_rule,
          check_written_with_torch]
