"""Helpers shared by the tests, the benchmarks, the book and the exercises."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from . import zoo
from .forms import recurrent
from .spec import MixerSpec

__all__ = ["rel_err", "assert_close", "CASES", "case_id", "random_case", "flat_tensors", "prefix_state",
           "has_form"]


def rel_err(out: Tensor, ref: Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ (absolute error when ref is zero); NaN anywhere gives inf."""
    if out.shape != ref.shape:
        raise AssertionError(f"shape {tuple(out.shape)} != reference shape {tuple(ref.shape)}")
    if not bool(torch.isfinite(out).all()):
        return float("inf")
    diff = (out.double() - ref.double()).norm().item()
    scale = ref.double().norm().item()
    return diff / scale if scale > 0 else diff


def assert_close(name: str, out: Tensor, ref: Tensor, tol: float) -> None:
    """Fail with the tensor's name and its relative error unless it is below ``tol``."""
    err = rel_err(out, ref)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e} (max abs " \
                       f"{(out.double() - ref.double()).abs().max().item():.3e})"


# Every mixer, plus the option settings that change its algorithm or its maths.
CASES: list[tuple[str, dict[str, Any]]] = [(n, {}) for n in zoo.names()] + [
    ("linear_attention", dict(feature_map="elu1", normalize=True)),
    ("linear_attention", dict(feature_map="relu")),
    ("linear_attention", dict(feature_map="taylor", normalize=True)),
    ("linear_attention", dict(feature_map="hedgehog", normalize=True)),
    ("linear_attention", dict(feature_map="performer", normalize=True)),
    ("softmax_attention", dict(window=3)),
    ("softmax_attention", dict(window=4, sink_tokens=2)),
    ("qlstm", dict(reversed=True)),
    ("lightning_attention", dict(layer_idx=1, num_layers=4)),
    ("lightning_attention", dict(layer_idx=1, num_layers=4, schedule="fla")),
    ("titans", dict(memory="linear")),
]


def has_form(case: tuple[str, dict], form: str) -> bool:
    """Does the case's mixer have this exact form? (its spec's capability flag ``exact_forms``)"""
    name, opts = case
    return form in zoo.get(name, **opts).forms()


def case_id(case: tuple[str, dict]) -> str:
    name, opts = case
    return name + "".join(f"-{k}={v}" for k, v in opts.items())


def random_case(name: str, options: dict, B: int, T: int, H: int, K: int, V: int,
                seed: int, dtype=torch.float64) -> tuple[MixerSpec, dict]:
    """The spec with ``options`` bound and valid random inputs for it."""
    spec = zoo.get(name, **options)
    return spec, spec.random_inputs(B, T, H, K, V, dtype=dtype, seed=seed)


def flat_tensors(x: Any) -> list[Tensor]:
    """The floating tensors inside an output or a state (tensor, KVCache or AarenState)."""
    if isinstance(x, Tensor):
        return [x] if x.is_floating_point() else []
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in flat_tensors(item)]
    return []


def prefix_state(spec: MixerSpec, inputs: dict, T0: int, seed: int) -> Any:
    """A valid state: the final state after a random prefix of T0 tokens, detached."""
    dims = {}
    for inp in spec.inputs:
        if inp.name in inputs:
            dims.update(zip(inp.dims, inputs[inp.name].shape))
    first = next(iter(inputs.values()))
    pre = spec.random_inputs(dims["B"], T0, dims["H"], dims.get("N", dims.get("K", 1)),
                             dims["V"], dtype=first.dtype, device=first.device, seed=seed + 7919)
    # Time-invariant parameters (no T dim) must be the same in the prefix as in the main run.
    for inp in spec.inputs:
        if "T" not in inp.dims and inp.name in inputs:
            pre[inp.name] = inputs[inp.name]
    _, state = recurrent(spec, **pre)
    return _detach(state)


def _detach(state: Any) -> Any:
    if isinstance(state, Tensor):
        return state.detach().clone() if state.is_floating_point() else state
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(_detach(s) for s in state))
    if isinstance(state, tuple):  # e.g. the per-layer weights inside a MemoryState
        return tuple(_detach(s) for s in state)
    return state


def requires_grad(state: Any) -> Any:
    """Mark the floating tensors of a state (or a dict of inputs) as leaves requiring grad."""
    if isinstance(state, dict):
        return {k: requires_grad(v) for k, v in state.items()}
    if isinstance(state, Tensor):
        return state.detach().clone().requires_grad_(state.is_floating_point())
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(requires_grad(s) if (isinstance(s, Tensor) and s.is_floating_point())
                             or isinstance(s, tuple) else s for s in state))
    if isinstance(state, tuple):  # e.g. the per-layer weights inside a MemoryState
        return tuple(requires_grad(s) for s in state)
    return state


def grads(outputs: Iterable[Tensor], leaves: list[Tensor], seed: int) -> list[Tensor]:
    """Gradients of Σ ⟨out, R⟩ for fixed random R, so every output path (state included) counts."""
    gen = torch.Generator().manual_seed(seed)
    loss = 0.0
    for out in outputs:
        R = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
        loss = loss + (out * R).sum()
    gs = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [torch.zeros_like(l) if g is None else g for g, l in zip(gs, leaves)]
