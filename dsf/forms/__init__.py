"""The exact forms of a mixer, derived from its spec: recurrent, parallel (Φ) and chunked.

Each takes a spec or a zoo name, then the mixer's inputs as keyword tensors (and options)::

    o, S = dsf.recurrent("gla", q=q, k=k, v=v, gk=gk)
    o    = dsf.parallel("gla", q=q, k=k, v=v, gk=gk)
    Φ    = dsf.phi("gla", q=q, k=k, v=v, gk=gk)            # y = Φ u
    o, S = dsf.chunked("gla", q=q, k=k, v=v, gk=gk, chunk_size=64, initial_state=S0)

A memory updated by a gradient step (``MemoryTerms``, e.g. ``titans``) has the forms its spec lists
in ``spec.forms()``; the others raise a ValueError. ``dsf.chunked(..., approximate="minibatch")``
runs the papers' mini-batch approximation instead (see :mod:`dsf.forms.memory`).
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor

from ..spec import ACTIVATIONS, MixerSpec, check_state, resolve_inputs
from ..terms import AarenState, KVCache, LinearTerms, MemoryTerms, SoftmaxTerms
from .chunked import chunked_aaren, chunked_linear, chunked_softmax
from .memory import (chunked_memory, check_memory_state, memory_forms, minibatch_memory, phi_memory,
                     recurrent_memory)
from .parallel import apply_phi, phi_linear, phi_softmax
from .recurrent import recurrent_aaren, recurrent_linear, recurrent_softmax

__all__ = ["recurrent", "parallel", "phi", "chunked", "prepare", "check_options"]


def _spec(mixer: str | MixerSpec) -> MixerSpec:
    if isinstance(mixer, MixerSpec):
        return mixer
    from .. import zoo  # the forms do not depend on the zoo, only this convenience does

    return zoo.get(mixer)


def prepare(mixer: str | MixerSpec, inputs: dict[str, Any], widen: bool = False,
            check_values: bool = False) -> tuple[MixerSpec, Any]:
    """Validate the inputs against the spec and lower them to terms.

    A 16-bit gate or parameter beside float32 activations is widened to float32 first: the lowering
    would otherwise take its logs and products in 16 bits, and the terms lose precision the
    activations keep. ``widen`` (the forms): float32 gates or parameters beside 16-bit activations
    widen the activations too, so every form computes in float32 and returns it (the kernels, which
    cast the terms to the activations' dtype themselves, keep them as they come). ``check_values`` (the
    forms): a positive log decay is refused (a reduction and a host read per input; the kernels skip it)."""
    spec = _spec(mixer)
    tensors, options = spec.split_kwargs(inputs)
    resolve_inputs(spec, tensors)
    if check_values:
        _nonpositive(spec, tensors)
    act = next((tensors[n].dtype for n in ACTIVATIONS if isinstance(tensors.get(n), torch.Tensor)), None)
    if widen and act in (torch.float16, torch.bfloat16) and any(
            isinstance(x, torch.Tensor) and x.dtype == torch.float32 for x in tensors.values()):
        # (the forms' in-place products refused the mix with bare dtype errors, or returned a dtype that
        # depended on the form: bf16 from one, float32 from another)
        act = torch.float32
    if act == torch.float32:
        tensors = {n: x.float() if isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16) else x
                   for n, x in tensors.items()}
    try:
        terms = spec.lower(**tensors, **options)
    except (TypeError, ValueError) as e:
        # a lowering's shared helpers (the scale's check, feature maps) do not know whose they are
        if str(e).startswith(f"{spec.name}:") or str(e).startswith(f"{spec.name}."):
            raise
        raise type(e)(f"{spec.name}: {e}") from e
    if not isinstance(terms, (LinearTerms, SoftmaxTerms, MemoryTerms)):
        raise TypeError(f"{spec.name}: lower() must return dsf.LinearTerms, dsf.SoftmaxTerms or dsf.MemoryTerms, "
                        f"got {type(terms).__name__}")
    return spec, terms


def _nonpositive(spec: MixerSpec, tensors: dict[str, Any]) -> None:
    """Refuse a positive value of an input the spec declares a log decay (``Input.nonpositive``)."""
    for inp in spec.inputs:
        x = tensors.get(inp.name)
        if inp.nonpositive and isinstance(x, torch.Tensor) and x.numel() and bool((x > 0).any()):
            raise ValueError(f"{spec.name}: {inp.name} is a log decay ({inp.doc}) but has values up to "
                             f"{x.max().item():.3g}; pass the log of the decay (e.g. F.logsigmoid(x)), not the "
                             "decay itself")


def check_options(spec: MixerSpec) -> None:
    """Check a spec's option values now, by lowering two tokens of its random inputs (a spec without
    ``random_inputs`` is checked at its first call): what binds options ahead of the first call
    (``MixerLayer``, ``kernels.compile``) reports a bad value there, not at the first forward."""
    if spec.random_inputs is not None:
        prepare(spec, spec.draw_inputs(1, 2, 1, 4, 4, dtype=torch.float64, seed=0))


def _finite_decays(spec: MixerSpec, terms: Any, form: str) -> None:
    """The chunked and parallel forms take the decay between two steps as G_i − G_j of cumulative log
    decays, undefined (−inf − −inf) past a log decay of −inf: refused there, not turned into NaN."""
    # (a memory's retention and momentum decays alike: their chunked, parallel and mini-batch forms gave NaN)
    if isinstance(terms, LinearTerms):
        gates = [("log decay", terms.g)]
    elif isinstance(terms, MemoryTerms):
        gates = [("log retention g", terms.g), ("log momentum decay log_eta", terms.log_eta)]
    else:
        gates = []
    for what, g in gates:
        if g is not None and bool(torch.isneginf(g).any()):
            raise ValueError(f"{spec.name}: a {what} of -inf (a gate of exactly 0) has no {form} form: it takes "
                             "the decay between two steps as a difference of cumulative log decays; use "
                             "dsf.recurrent, or start a new sequence there")


def _internal_state(spec: MixerSpec, terms: Any, state: Any, arg: str = "initial_state") -> Any:
    """Check a user-supplied initial state and bring it to the internal layout (``arg``: what the
    caller calls it, for the errors; the kernels' step says "state")."""
    if state is None:
        return None
    if isinstance(terms, MemoryTerms):
        return check_memory_state(spec.name, terms, state)
    if isinstance(terms, LinearTerms):
        internal = torch.empty(terms.state_shape, device="meta")
        expected = tuple(terms.to_user_state(internal).shape)
        check_state(spec.name, arg, state, expected,
                    "[" + ", ".join(spec.state_dims) + "]", terms.u.dtype)
        return terms.to_internal_state(state.to(terms.u.dtype))
    B, T, H, K, V = terms.shape
    if terms.shared_query:
        if not isinstance(state, AarenState):
            raise TypeError(f"{spec.name}: {arg} must be a dsf.AarenState(m, c, a), "
                            f"got {type(state).__name__}")
        check_state(spec.name, f"{arg}.m", state.m, (B, H), "[B, H]", terms.u.dtype)
        check_state(spec.name, f"{arg}.c", state.c, (B, H), "[B, H]", terms.u.dtype)
        check_state(spec.name, f"{arg}.a", state.a, (B, H, V), "[B, H, V]", terms.u.dtype)
        # c = Σ exp(s − m) is > 0 once a token was seen (m finite) and 0 in the empty state (m = −inf).
        # Anything else is no softmax state, which the forms and the kernels read differently (the
        # kernels took c ≤ 0 as empty): refused, for one read on the host
        seen = torch.isfinite(state.m) & torch.isfinite(state.c) & (state.c > 0)
        bad = ~(seen | (torch.isneginf(state.m) & (state.c == 0)))
        if bool(bad.any()):
            b, h = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{spec.name}: {arg} is not a softmax state at [b, h] = [{b}, {h}] (m = "
                             f"{float(state.m[b, h])}, c = {float(state.c[b, h])}): c must be > 0 where m is finite "
                             "and 0 where m = -inf (the empty state)")
        return state
    if not isinstance(state, KVCache):
        raise TypeError(f"{spec.name}: {arg} must be a dsf.KVCache(k, v, pos, seen), "
                        f"got {type(state).__name__}")
    L = state.k.shape[1] if state.k.dim() == 4 else -1
    check_state(spec.name, f"{arg}.k", state.k, (B, L, H, K), "[B, L, H, K]", terms.u.dtype)
    check_state(spec.name, f"{arg}.v", state.v, (B, L, H, V), "[B, L, H, V]", terms.u.dtype)
    if not isinstance(state.pos, torch.Tensor):
        raise TypeError(f"{spec.name}: {arg}.pos must be an int64 tensor [L] of positions, got "
                        f"{type(state.pos).__name__}")
    if tuple(state.pos.shape) != (L,):
        raise ValueError(f"{spec.name}: {arg}.pos must have shape [L] = ({L},), "
                         f"got {tuple(state.pos.shape)}")
    return state


def _user_state(terms: Any, state: Any) -> Any:
    return terms.to_user_state(state) if isinstance(terms, LinearTerms) else state


def _memory_form(spec: MixerSpec, terms: MemoryTerms, form: str) -> None:
    """Raise a clear error when a memory has no exact ``form``."""
    keywise = terms.g is not None and terms.g.dim() == 4
    if form in memory_forms(terms.memory, terms.bias, terms.retention, terms.algorithm, keywise):
        return
    what = (f"{terms.memory} memory, {terms.bias} bias, {terms.retention} retention, "
            f"{terms.algorithm}")
    if form == "parallel":
        raise ValueError(f"{spec.name}: no Φ (parallel form): the memory ({what}) is not linear in its "
                         "state and its values; use dsf.recurrent, or dsf.chunked(..., "
                         "approximate='minibatch')")
    raise ValueError(f"{spec.name}: no exact chunked form for this memory ({what}); "
                     "dsf.chunked(..., approximate='minibatch') gives the papers' mini-batch "
                     "approximation (gradients at the chunk-start state)")


def recurrent(mixer: str | MixerSpec, *, initial_state: Any = None, **inputs: Any) -> tuple[Tensor, Any]:
    """Step the recurrence token by token: the reference. Returns ``(o, final_state)``."""
    spec, terms = prepare(mixer, inputs, widen=True, check_values=True)
    S0 = _internal_state(spec, terms, initial_state)
    if isinstance(terms, MemoryTerms):
        return recurrent_memory(terms, S0)
    if isinstance(terms, LinearTerms):
        o, S = recurrent_linear(terms, S0)
    elif terms.shared_query:
        o, S = recurrent_aaren(terms, S0)
    else:
        o, S = recurrent_softmax(terms, S0)
    return o, _user_state(terms, S)


def phi(mixer: str | MixerSpec, **inputs: Any) -> Tensor:
    """The DSF operator Φ with ``y = Φ u`` from a zero state.

    Shape [B, H, T, T] when each block Φ_ij is a scalar times the identity over value channels
    (attention-like mixers), [B, H, V, T, T] when it is diagonal over them (SSMs, gated RNNs).
    """
    spec, terms = prepare(mixer, inputs, widen=True, check_values=True)
    if isinstance(terms, MemoryTerms):
        _memory_form(spec, terms, "parallel")
        _finite_decays(spec, terms, "parallel")
        return phi_memory(terms)
    if isinstance(terms, SoftmaxTerms):
        return phi_softmax(terms)
    _finite_decays(spec, terms, "parallel")
    P = phi_linear(terms)
    return P if terms.phi_out is None else terms.phi_out(P)


def parallel(mixer: str | MixerSpec, **inputs: Any) -> Tensor:
    """Materialise Φ and return ``y = Φ u`` (from a zero state)."""
    spec, terms = prepare(mixer, inputs, widen=True, check_values=True)
    if isinstance(terms, MemoryTerms):
        _memory_form(spec, terms, "parallel")
        _finite_decays(spec, terms, "parallel")
        return apply_phi(phi_memory(terms), terms.v)
    if isinstance(terms, SoftmaxTerms):
        return apply_phi(phi_softmax(terms), terms.u)
    _finite_decays(spec, terms, "parallel")
    y = apply_phi(phi_linear(terms), terms.u)
    return y if terms.out is None else terms.out(y)


def chunked(mixer: str | MixerSpec, *, chunk_size: int = 64, initial_state: Any = None,
            approximate: str | None = None, **inputs: Any) -> tuple[Tensor, Any]:
    """Parallel inside chunks of ``chunk_size`` tokens, recurrent across them. ``(o, final_state)``.

    ``approximate="minibatch"`` (gradient-step memories only): the papers' mini-batch form, every
    gradient of a chunk taken at the chunk-start state; not exact, except with ``chunk_size=1``.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    chunk_size = int(chunk_size)   # (a numpy or 0-d integer as a plain int)
    if approximate not in (None, "minibatch"):
        raise ValueError(f"approximate must be None (exact) or 'minibatch', got {approximate!r}")
    spec, terms = prepare(mixer, inputs, widen=True, check_values=True)
    S0 = _internal_state(spec, terms, initial_state)
    if approximate is not None and not isinstance(terms, MemoryTerms):
        raise ValueError(f"{spec.name}: approximate='minibatch' is for memories updated by a gradient "
                         "step (Titans, Miras, TTT); this mixer's chunked form is exact")
    if isinstance(terms, MemoryTerms):
        if approximate == "minibatch":
            _finite_decays(spec, terms, "mini-batch")
            return minibatch_memory(terms, S0, chunk_size)
        _memory_form(spec, terms, "chunked")
        _finite_decays(spec, terms, "chunked")
        return chunked_memory(terms, S0, chunk_size)
    if isinstance(terms, LinearTerms):
        _finite_decays(spec, terms, "chunked")
        o, S = chunked_linear(terms, S0, chunk_size)
    elif terms.shared_query:
        o, S = chunked_aaren(terms, S0, chunk_size)
    else:
        o, S = chunked_softmax(terms, S0, chunk_size)
    return o, _user_state(terms, S)
