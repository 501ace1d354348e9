"""Checks for exercise 6: the state and outputs built from W and U against ``dsf.recurrent("deltanet")``."""

from __future__ import annotations

import torch

import dsf

from .._checking import Case, assert_close, float64_tensor, for_all_cases, without_dsf

TITLE = "Exercise 6: a DeltaNet chunk in WY form"
FUNCTION = "wy_chunk"


def _call(fn, x: dict):
    k, v, beta = x["k"].clone(), x["v"].clone(), x["beta"].clone()
    result = fn(k, v, beta)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise AssertionError(f"return a tuple (W, U), got {type(result).__name__}")
    if not (torch.equal(k, x["k"]) and torch.equal(v, x["v"]) and torch.equal(beta, x["beta"])):
        raise AssertionError("k, v or beta was modified in place: work on new tensors")
    return float64_tensor("W", result[0]), float64_tensor("U", result[1])


def _chunk(fn, x: dict, S0: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk's outputs [B, C, H, V] and final state from the learner's W and U."""
    W, U = _call(fn, x)
    for name, got, like in (("W", W, x["k"]), ("U", U, x["v"])):
        if got.shape != like.shape:
            raise AssertionError(f"{name} should have shape {list(like.shape)}, got {list(got.shape)}")
    q, k = x["q"].transpose(1, 2) * scale, x["k"].transpose(1, 2)        # [B, H, C, ·]
    Vp = U.transpose(1, 2) - W.transpose(1, 2) @ S0                      # corrected values U − W S0
    mask = torch.tril(torch.ones(k.shape[2], k.shape[2], dtype=torch.float64))
    o = q @ S0 + ((q @ k.transpose(-1, -2)) * mask) @ Vp
    return o.transpose(1, 2), S0 + k.transpose(-1, -2) @ Vp


def _inputs(case: Case) -> dict:
    """DeltaNet's random inputs with keys of lengths 0.5 to 1.5 (its own are unit vectors, which a
    solution that normalised k would pass unnoticed)."""
    x = case.inputs("deltanet")
    gen = torch.Generator().manual_seed(case.seed + 1)
    x["k"] = x["k"] * (0.5 + torch.rand(*x["k"].shape[:3], 1, generator=gen, dtype=torch.float64))
    return x


def _scale(case: Case) -> float:
    return case.K ** -0.5 if case.scale is None else case.scale


def check_shapes(fn):
    """returns (W [B, C, H, K], U [B, C, H, V]) in float64, inputs unchanged"""
    x = Case(2, 6, 3, 4, 5, seed=0, scale=None).inputs("deltanet")
    W, U = _call(fn, x)
    for name, got, want in (("W", W, (2, 6, 3, 4)), ("U", U, (2, 6, 3, 5))):
        if tuple(got.shape) != want:
            raise AssertionError(f"{name} should have shape {list(want)}, got {list(got.shape)}")


def check_one_token(fn):
    """one token: W = β k and U = β v"""
    x = _inputs(Case(2, 1, 2, 3, 4, seed=3, scale=None))
    W, U = _call(fn, x)
    b = x["beta"][..., None]
    assert_close("W (one token)", W, b * x["k"])
    assert_close("U (one token)", U, b * x["v"])


def check_one_chunk(fn):
    """one chunk from a zero and from a random state: its outputs and final state"""
    def body(case):
        x = _inputs(case)
        gen = torch.Generator().manual_seed(case.seed)
        for label, S0 in (("zero", torch.zeros(case.B, case.H, case.K, case.V, dtype=torch.float64)),
                          ("random", torch.randn(case.B, case.H, case.K, case.V, generator=gen, dtype=torch.float64))):
            o, S = _chunk(fn, x, S0, _scale(case))
            o_ref, S_ref = dsf.recurrent("deltanet", **x, initial_state=S0, scale=case.scale)
            assert_close(f"outputs ({label} S0)", o, o_ref)
            assert_close(f"final state S0 + Kᵀ(U − W S0) ({label} S0)", S, S_ref)
    for_all_cases(body)


def check_chunks_in_a_row(fn):
    """a sequence in chunks of 4, the state carried from one to the next"""
    def body(case):
        x = _inputs(case)
        S = torch.zeros(case.B, case.H, case.K, case.V, dtype=torch.float64)
        outs = []
        for a in range(0, case.T, 4):
            o, S = _chunk(fn, {n: t[:, a:a + 4] for n, t in x.items()}, S, _scale(case))
            outs.append(o)
        o_ref, S_ref = dsf.recurrent("deltanet", **x, scale=case.scale)
        assert_close("outputs (chunks of 4)", torch.cat(outs, 1), o_ref)
        assert_close("final state (chunks of 4)", S, S_ref)
    for_all_cases(body)


def check_written_with_torch(fn):
    """is written with torch, not by calling dsf (the checks' answer key)"""
    x = Case(1, 4, 2, 3, 2, seed=0, scale=None).inputs("deltanet")
    without_dsf(fn, lambda: _call(fn, x))


CHECKS = [check_shapes, check_one_token, check_one_chunk, check_chunks_in_a_row, check_written_with_torch]
