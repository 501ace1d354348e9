"""Checks for exercise 1, with ``dsf`` as the oracle: ``dsf.phi("mamba2")`` and ``dsf.recurrent``."""

from __future__ import annotations

import torch

import dsf

from .._checking import Case, assert_close, float64_tensor, for_all_cases, without_dsf

TITLE = "Exercise 1: Φ of a scalar-decay mixer (Mamba-2)"
FUNCTION = "phi_scalar_decay"


def _call(fn, x: dict, scale):
    return fn(x["q"], x["k"], x["g"], scale=scale)


def check_shape(fn):
    """returns a float64 tensor of shape [B, H, T, T]"""
    x = Case(2, 5, 3, 4, 2, seed=0, scale=None).inputs("mamba2")
    P = _call(fn, x, None)
    if not isinstance(P, torch.Tensor):
        raise AssertionError(f"expected a torch.Tensor, got {type(P).__name__}")
    if tuple(P.shape) != (2, 3, 5, 5):
        raise AssertionError(f"q is [B, T, H, K] = [2, 5, 3, 4], so Φ should be [B, H, T, T] = "
                             f"[2, 3, 5, 5]; got {list(P.shape)}")
    if P.dtype != torch.float64:
        raise AssertionError(f"expected dtype float64 (the dtype of q), got {P.dtype}")


def check_causal_and_finite(fn):
    """is causal (zero above the diagonal) and finite, even with strong decays"""
    x = Case(1, 40, 2, 3, 2, seed=1, scale=None).inputs("mamba2")
    x["g"] = torch.full_like(x["g"], -30.0)   # exp(G_i − G_j) above the diagonal would be e^{+1170}
    P = _call(fn, x, None)
    if not bool(torch.isfinite(P).all()):
        raise AssertionError("Φ has inf or nan entries: compute exp(G_i − G_j) only where i >= j "
                             "(mask with -inf before exp, not after) — see the README's hint")
    upper = torch.ones(40, 40, dtype=torch.bool).triu(1)
    if bool((P[..., upper] != 0).any()):
        raise AssertionError("Φ[i, j] must be exactly 0 for j > i: the output cannot see the future")


def check_matches_dsf_phi(fn):
    """equals dsf.phi("mamba2") on random inputs (T = 1, odd and even T, any scale)"""
    def body(case):
        x = case.inputs("mamba2")
        assert_close("Φ", _call(fn, x, case.scale), dsf.phi("mamba2", **x, scale=case.scale))
    for_all_cases(body)


def check_y_equals_recurrent(fn):
    """y = Φ v reproduces dsf.recurrent("mamba2"), the step-by-step recurrence"""
    def body(case):
        x = case.inputs("mamba2")
        y = torch.einsum("bhij,bjhv->bihv", float64_tensor("Φ", _call(fn, x, case.scale)), x["v"])
        o, _ = dsf.recurrent("mamba2", **x, scale=case.scale)
        assert_close("y = Φ v", y, o)
    for_all_cases(body)


def check_written_with_torch(fn):
    """is written with torch, not by calling dsf (the checks' answer key)"""
    without_dsf(fn, lambda: _call(fn, Case(1, 5, 2, 3, 2, seed=0, scale=None).inputs("mamba2"), None))


CHECKS = [check_shape, check_causal_and_finite, check_matches_dsf_phi, check_y_equals_recurrent,
          check_written_with_torch]
