"""Triton kernels compiled from dsf specs.

``kernels.compile(mixer)`` lowers a spec (or zoo name) to one of a few parameterised kernel
families, chosen by the structure of its transition Λ_t:

* ``diag``: decays that are none, a scalar per head, key-wise or value-wise (linear attention,
  RetNet, Lightning, Mamba-2, GLA, normalised attention, S4D/S6 and the gated RNNs);
* ``delta``: identity minus rank one, optionally gated (DeltaNet, Gated DeltaNet, Longhorn);
* ``softmax``: the normalised exponential kernel (softmax attention, window and sinks; Aaren, whose
  one learned query is broadcast over time);
* ``memory``: a gradient step on the ℓ2 loss of a matrix memory with momentum (Titans with
  ``memory="linear"``); the state is the pair (memory, momentum), a ``dsf.MemoryState``.

A gradient-step memory linear in its state without momentum takes the family it is (TTT-linear and
the ℓ2 bias: the delta rule with β = θ; the dot-product bias: decayed linear attention with write
gate θ; the ℓ2 bias under ℓ2 retention in Titans' order: the memory kernels with η = 0), its state
still a ``dsf.MemoryState((S,), ())``.

The spec's ``lower`` runs in PyTorch around the kernels (feature maps, gates, output scales and the
skip), so autograd covers it; the kernels do the recurrence, which is where the time goes.

>>> mixer = kernels.compile("gated_deltanet")                         # doctest: +SKIP
>>> o, S = mixer.chunked(q=q, k=k, v=v, g=g, beta=beta, output_final_state=True)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

import dsf
from dsf.forms import _internal_state, check_options, prepare
from dsf.spec import MixerSpec, Transition, check_state, resolve_inputs
from dsf.terms import LinearTerms, MemoryState, MemoryTerms

from ._common import DTYPES, MAX_HEAD_DIM, UnsupportedHeadDim, check_cu_seqlens, check_device, check_head_dim

__all__ = ["compile", "supports", "CompiledMixer", "UnsupportedMixer", "UnsupportedHeadDim"]


class UnsupportedMixer(ValueError):
    """No kernel family can compute this mixer (its transition has no kernel yet)."""


def _check_dtypes(spec: MixerSpec, inputs: dict) -> None:
    """The kernels run on fp32/bf16/fp16 inputs: a float64 one is refused by its argument's name
    (before any lowering renames it) and pointed to the dsf forms."""
    for name in spec.input_names:
        x = inputs.get(name)
        if isinstance(x, Tensor) and x.is_floating_point() and x.dtype not in DTYPES.values():
            raise TypeError(f"{spec.name}: {name} has dtype {x.dtype}; the kernels take float32, bfloat16 or "
                            "float16 inputs (float64 runs in the dsf forms: dsf.chunked, dsf.recurrent)")


def _check_head_dims(spec: MixerSpec, K: int, V: int, extra: int, user_K: int | None = None) -> None:
    """The lowered head dims against the kernels' limits, by the mixer's name; ``extra``: the value
    columns the kernels add (a normaliser's), so that the error gives the user's V; ``user_K``: the
    queries' K where a feature map changed it, so that the error says why."""
    check_head_dim(spec.name, "K", K, why=f" (the feature map turns the queries' K={user_K} into {K})"
                   if user_K is not None and user_K != K else "")
    check_head_dim(spec.name, "V", V, hi=MAX_HEAD_DIM - extra,
                   why=" (normalize=True adds a column for the normaliser)" if extra else "")


def _spec(mixer: str | MixerSpec) -> MixerSpec:
    return mixer if isinstance(mixer, MixerSpec) else dsf.zoo.get(mixer)


def supports(mixer: str | MixerSpec) -> dict[str, Any] | None:
    """Which kernel family compiles this mixer and which kernels it has, or None."""
    spec = _spec(mixer)
    t = spec.transition
    if t in (Transition.DELTA, Transition.GATED_DELTA):
        return {"family": "delta", "chunked": "chunk", "recurrent": True, "step": True}
    if t == Transition.SOFTMAX:
        return {"family": "softmax", "chunked": "flash", "recurrent": "flash", "step": True}
    if t in (Transition.IDENTITY, Transition.CONST_SCALAR, Transition.SCALAR):
        return {"family": "diag", "chunked": "chunk", "recurrent": True, "step": True}
    if t == Transition.KEY_DIAG:
        return {"family": "diag", "chunked": "chunk", "recurrent": True, "step": True}
    if t in (Transition.VALUE_DIAG, Transition.CHANNEL_STATE_DIAG):
        # value-wise: no chunked kernel yet; per-channel SSM states (V = 1) fill a chunk's value
        # tile to 1/16 and run the fused scan for training
        return {"family": "diag", "chunked": "recurrent", "recurrent": True, "step": True}
    if t == Transition.GRADIENT_STEP:
        # a memory linear in its state without momentum is decayed linear attention or the delta
        # rule (kernels.memory.as_linear); the ℓ2 bias with momentum has kernels of its own
        from .memory import route

        family = route(spec)
        if family is not None:
            return {"family": family, "chunked": "chunk", "recurrent": True, "step": True}
    return None


def _direct_plans() -> dict:
    # Lowerings that only scale q: their decoding step needs no PyTorch op around the kernel, so
    # compile().step is a single launch with the scale applied inside it. Keyed by the lowering
    # function itself, so a custom spec with its own lowering takes the general path.
    from dsf.zoo.decay import lower_gla, lower_mamba2
    from dsf.zoo.delta import lower_deltanet, lower_gated_deltanet

    # lowering → (family, decay, name of the gate input)
    return {lower_mamba2: ("diag", "scalar", "g"), lower_gla: ("diag", "key", "gk"),
            lower_deltanet: ("delta", None, None), lower_gated_deltanet: ("delta", "scalar", "g")}


def describe(mixer: str | MixerSpec) -> str:
    """One short line for the zoo table."""
    s = supports(mixer)
    if s is None:
        return "—"
    return f"{s['family']}: chunked ({s['chunked']}), recurrent, step"


def _check_writable(name: str, state: Any) -> None:
    """A state to update in place has one memory location per element (an expanded view's rows share
    theirs: the copy back failed with torch's bare overlap error, after the kernel had run)."""
    parts = ([("state", state)] if isinstance(state, Tensor) else
             [(f"state.weights[{i}]", t) for i, t in enumerate(state.weights)]
             + [(f"state.momentum[{i}]", t) for i, t in enumerate(state.momentum)]
             if isinstance(state, MemoryState) else [])
    for arg, t in parts:
        if isinstance(t, Tensor) and any(st == 0 and n > 1 for st, n in zip(t.stride(), t.shape)):
            raise ValueError(f"{name}.step: inplace=True needs a {arg} whose elements each have their own memory; "
                             f"got an expanded view (shape {tuple(t.shape)}, strides {t.stride()}): pass "
                             f"{arg}.clone() or inplace=False")


class CompiledMixer:
    """A mixer's GPU kernels: ``chunked`` (training), ``recurrent`` and ``step`` (decoding)."""

    def __init__(self, spec: MixerSpec):
        info = supports(spec)
        if info is None:
            hint = "use dsf.chunked" if "chunked" in spec.forms() else "use dsf.recurrent" + (
                " (exact) or dsf.chunked(..., approximate='minibatch')"
                if spec.transition == Transition.GRADIENT_STEP else "")
            raise UnsupportedMixer(f"kernels: no kernel family compiles {spec.name!r} ({spec.transition}); {hint}")
        self.spec, self.family = spec, info["family"]
        self.info = info
        self._direct = _direct_plans().get(spec.lower)

    def __repr__(self) -> str:
        return f"CompiledMixer({self.spec.name!r}, family={self.family!r})"

    # -- training and prefill -------------------------------------------------------------------
    def chunked(self, *, initial_state: Tensor | None = None, output_final_state: bool = False,
                cu_seqlens: Tensor | None = None, **inputs: Any) -> tuple[Tensor, Any]:
        """The training kernel: ``(o, final_state)``, differentiable in every input and state.

        With ``cu_seqlens`` (N sequences packed along T, B = 1) the final state is each sequence's:
        a batch of N ([N, H, K, V], or Aaren's state of N), or a list of N KV caches for softmax
        attention, whose lengths differ."""
        if self._direct is not None:
            out = self._direct_chunked(inputs, initial_state, output_final_state, cu_seqlens)
            if out is not None:
                return out
        return self._run("chunked", inputs, initial_state, output_final_state, cu_seqlens)

    def recurrent(self, *, initial_state: Tensor | None = None, output_final_state: bool = False,
                  cu_seqlens: Tensor | None = None, **inputs: Any) -> tuple[Tensor, Any]:
        """The fused step-by-step kernel, same signature and results as :meth:`chunked`."""
        return self._run("recurrent", inputs, initial_state, output_final_state, cu_seqlens)

    def step(self, state: Any, *, inplace: bool = False, **inputs: Any) -> tuple[Tensor, Any]:
        """One decoding token: inputs without the time dim ([B, H, ·]); returns ``(o, new_state)``.

        With ``inplace=True`` a tensor state is updated in place (and returned).
        """
        if inplace:
            _check_writable(self.spec.name, state)
        if self._direct is not None:
            out = self._direct_step(state, inplace, inputs)
            if out is not None:
                return out
        spec = self.spec
        one = {}
        for inp in spec.inputs:
            if inp.name in inputs and inputs[inp.name] is not None:
                x = inputs[inp.name]
                if not isinstance(x, Tensor):
                    raise TypeError(f"{spec.name}.step: {inp.name} must be a torch.Tensor, got {type(x).__name__}")
                if "T" in inp.dims and x.dim() != len(inp.dims) - 1:
                    # checked here: after the time dim is added, the spec's check would count it too
                    dims = [d for d in inp.dims if d != "T"]
                    raise ValueError(f"{spec.name}.step: {inp.name} must have {len(dims)} dims "
                                     f"[{', '.join(dims)}] (one token, no time dim), got shape {tuple(x.shape)}")
                one[inp.name] = x.unsqueeze(1) if "T" in inp.dims else x
        one.update({k: v for k, v in inputs.items() if k not in spec.input_names})
        _check_dtypes(spec, one)
        fast = self._fast_step(one, state, inplace)
        if fast is not None:
            return fast
        o, new = self._run("recurrent", one, state, True, None, state_arg="state")
        if inplace and isinstance(state, Tensor):
            with torch.no_grad():
                state.copy_(new)
            new = state
        elif inplace and isinstance(state, MemoryState):
            with torch.no_grad():
                for old, x in zip([*state.weights, *state.momentum], [*new.weights, *new.momentum]):
                    old.copy_(x)
            new = state
        return o[:, 0], new

    def _direct_chunked(self, inputs, initial_state, output_final_state, cu_seqlens):
        """The chunked kernel of a spec whose lowering only scales q, given the scale instead: the
        kernels apply it (diagonal family: as they store the output; delta rule: to q in its loads),
        which saves a pass over q and its gradient. Same checks and errors as the lowering; None
        (the general path) for a scale that is not a plain number or an initial state it refuses."""
        family, decay, gate = self._direct
        spec = self.spec
        tensors, options = spec.split_kwargs(inputs)
        scale = options.get("scale")
        if set(options) - {"scale"} or isinstance(scale, bool) or not isinstance(scale, (int, float, type(None))) \
                or (scale is not None and not math.isfinite(scale)):
            return None   # (the general path words the error by the mixer's name)
        dims = resolve_inputs(spec, tensors)
        _check_dtypes(spec, tensors)
        B, T, H, K, V = (dims[d] for d in ("B", "T", "H", "K", "V"))
        N = check_cu_seqlens(spec.name, cu_seqlens, B, T)
        _check_head_dims(spec, K, V, 0)
        if initial_state is not None and (not isinstance(initial_state, Tensor) or not initial_state.is_floating_point()
                                          or tuple(initial_state.shape) != (N, H, K, V)):
            return None   # the general path words the error
        scale = K ** -0.5 if scale is None else float(scale)
        q, k, v, g = tensors["q"], tensors["k"], tensors["v"], tensors.get(gate) if gate else None
        kw = dict(initial_state=initial_state, output_final_state=output_final_state, cu_seqlens=cu_seqlens)
        if family == "delta":
            from .delta import chunk_delta

            return chunk_delta(q, k, v, tensors["beta"], g=g, scale=scale, **kw)
        from .diag import chunk_diag

        return chunk_diag(q, k, v, decay, g, scale=scale, **kw)

    def _direct_step(self, state: Any, inplace: bool, inputs: dict) -> tuple[Tensor, Tensor] | None:
        """The step of a spec whose lowering only scales q, as one kernel launch and nothing else.

        Returns None (the general path) for anything that step kernel does not take as it is: a
        state not in fp32, inputs or options it does not know, autograd, or inputs its own checks
        refuse — the general path then converts what it can and words any error for the mixer.
        """
        family, decay, gate = self._direct
        names = ("q", "k", "v") + ((gate,) if gate else ()) + (("beta",) if family == "delta" else ())
        if set(inputs) - set(names) - {"scale"} or not isinstance(state, Tensor) or state.dtype != torch.float32:
            return None
        ts = [inputs.get(n) for n in names]
        if not all(isinstance(t, Tensor) for t in ts) or ts[0].dim() != 3:
            return None
        # the spec's dtype rule (q, k, v one kernel dtype; a gate or β that dtype, or fp32 beside
        # 16-bit activations), which the step kernels do not check: anything else is worded below
        act = ts[0].dtype
        if act not in DTYPES.values() or any(t.dtype != act for t in ts[1:3]) or any(
                t.dtype != act and not (t.dtype == torch.float32 and act != torch.float32) for t in ts[3:]):
            return None
        if torch.is_grad_enabled() and any(t.requires_grad for t in (state, *ts)):
            return None
        scale = inputs.get("scale")
        scale = ts[0].shape[-1] ** -0.5 if scale is None else scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            return None
        g = inputs.get(gate) if gate else None
        try:
            if family == "delta":
                from .delta import delta_step

                return delta_step(state, *ts[:3], inputs["beta"], g, inplace=inplace, scale=scale)
            from .diag import diag_step

            return diag_step(state, *ts[:3], decay, g, inplace=inplace, scale=scale)
        except (TypeError, ValueError):
            return None   # refused before any launch: the general path says why, for this mixer

    def _fast_step(self, one: dict, state: Any, inplace: bool) -> tuple[Tensor, Tensor] | None:
        """Diagonal and delta families: one launch that reads and writes the state once.

        Returns None (use the general path) when autograd is needed, the state is not a plain
        tensor in the kernel's layout (or a memory's MemoryState((S,), ()) holding one), or an
        in-place update of a non-fp32 state is asked for.
        """
        held = state if isinstance(state, MemoryState) else None
        if held is not None:   # a memory linear in its state: its one tensor is the family's state
            if not isinstance(held.weights, tuple) or len(held.weights) != 1 or held.momentum != ():
                return None
            state = held.weights[0]
        if self.family not in ("diag", "delta") or not isinstance(state, Tensor) or not state.is_floating_point():
            return None
        tensors = [state, *(x for x in one.values() if isinstance(x, Tensor))]
        if torch.is_grad_enabled() and any(x.requires_grad for x in tensors):
            return None
        if inplace and (state.dtype != torch.float32 or not state.is_contiguous()):
            return None
        spec, terms = prepare(self.spec, one)
        if held is None and isinstance(terms, MemoryTerms):
            return None   # a memory's state given as a bare tensor: the general path says what it takes
        if held is not None:
            from .memory import as_linear

            terms = as_linear(terms)   # (None for a MemoryState given to a mixer that is no memory)
            if terms is None:
                return None   # or for this call's options, which lower it to the memory kernels' recurrence
        if terms.state_in is not None or terms.state_out is not None:
            return None
        B, _, H, K, _ = terms.shape
        q, k, val = terms.q[:, 0], (terms.k if self.family == "delta" else terms.write_key())[:, 0], \
            terms.write_value()[:, 0]
        if not q.dtype == k.dtype == val.dtype:
            # in the activations' dtype, as on the general path: a float32 gate or step size in the
            # value (a memory's θ v) beside 16-bit q, k, v would be refused by the kernel
            act = next((one[n].dtype for n in ("q", "k", "v", "x") if isinstance(one.get(n), Tensor)), q.dtype)
            q, k, val = q.to(act), k.to(act), val.to(act)
        if tuple(state.shape) != (B, H, K, val.shape[-1]):
            return None  # the general path raises the shape error
        g = None if terms.g is None else terms.g[:, 0]
        if self.family == "delta":
            from .delta import delta_step

            o, new = delta_step(state, q, k, val, terms.beta[:, 0], g, inplace=inplace)
        else:
            from .diag import diag_step

            o, new = diag_step(state, q, k, val, terms.decay, g, inplace=inplace)
        if held is not None:
            new = held if inplace else MemoryState((new,), ())
        return terms.finish(o[:, None].to(terms.u.dtype))[:, 0], new

    # -- lowering -------------------------------------------------------------------------------
    def _run(self, form, inputs, initial_state, output_final_state, cu_seqlens, state_arg="initial_state"):
        """The general path: the spec's lowering, then the family's kernel (``state_arg``: what the
        caller calls the state, for the errors)."""
        _check_dtypes(self.spec, inputs)
        spec, terms = prepare(self.spec, inputs)
        B, T, H, K, V = terms.shape
        # checked here, by the mixer's name, for every family (not by the kernel a family lowers to)
        N = check_cu_seqlens(spec.name, cu_seqlens, B, T)
        q_in = inputs.get("q")
        _check_head_dims(spec, K, V, int(getattr(terms, "normalize", False)),
                         q_in.shape[-1] if isinstance(q_in, Tensor) else None)
        if self.family == "softmax":
            return _softmax(spec, terms, initial_state, output_final_state, cu_seqlens, state_arg)
        memory = isinstance(terms, MemoryTerms)
        if memory:   # a gradient-step memory linear in its state: its state is a MemoryState((S,), ())
            from .memory import as_linear, memory_state_in, run_memory

            # the family was chosen from the spec's options; one given with the call (grad_at) may
            # lower this call to a recurrence another family runs: the memory kernels take it then
            lin = None if self.family == "memory" else as_linear(terms)
            if lin is None:
                return run_memory(spec.name, terms, form, initial_state, output_final_state, cu_seqlens, state_arg)
            terms = lin
            if initial_state is not None:
                initial_state, _ = memory_state_in(spec.name, initial_state, N, H, K, V, False, terms.u.dtype,
                                                   state_arg, cu_seqlens is not None)
                state_arg += ".weights[0]"
        assert isinstance(terms, LinearTerms)
        h0 = None
        if initial_state is not None:
            # checked in the user's layout before converting it (a wrong shape failed inside the
            # conversion, e.g. a bare reshape error for S6's [B, H, N, V] state); N rows with cu_seqlens
            want = (N, H, K, V + int(terms.normalize))
            user = tuple(terms.to_user_state(torch.empty(want, device="meta")).shape)
            dims = (["N"] if cu_seqlens is not None else []) + list(spec.state_dims[cu_seqlens is not None:])
            check_state(spec.name, state_arg, initial_state, user, f"[{', '.join(dims)}]", terms.u.dtype)
            h0 = terms.to_internal_state(initial_state)
        # The kernels' read, write and value vectors share the activations' dtype. A lowering that
        # mixes a float32 gate or projection (allowed beside 16-bit activations) into one of them, as
        # S6's B, C or minGRU's gate can, is brought back to it (it was an error naming the kernel's q, k, v).
        act = next((inputs[n].dtype for n in ("q", "k", "v", "x") if isinstance(inputs.get(n), Tensor)),
                   terms.u.dtype)
        q, val = terms.q.to(act), terms.write_value().to(act)
        if self.family == "delta":
            from .delta import chunk_delta, fused_recurrent_delta

            kw = dict(g=terms.g, initial_state=h0, output_final_state=output_final_state,
                      cu_seqlens=cu_seqlens)
            k = terms.k.to(act)
            if form == "chunked":   # q arrives scaled by the spec's lowering
                o, ht = chunk_delta(q, k, val, terms.beta, scale=1.0, **kw)
            else:
                o, ht = fused_recurrent_delta(q, k, val, terms.beta, scale=1.0, **kw)
        else:
            from .diag import chunk_diag, fused_recurrent_diag

            fn = chunk_diag if form == "chunked" and self.info["chunked"] == "chunk" else fused_recurrent_diag
            o, ht = fn(q, terms.write_key().to(act), val, terms.decay, terms.g, initial_state=h0,
                       output_final_state=output_final_state, cu_seqlens=cu_seqlens)
        y = terms.finish(o.to(terms.u.dtype)).to(act)   # (a float32 skip term would promote it)
        if ht is None:
            return y, None
        return y, (MemoryState((ht,), ()) if memory else terms.to_user_state(ht))


def _aaren(spec, terms, state, output_final_state, cu_seqlens, state_arg="initial_state"):
    """Aaren through the flash kernel: its one learned query is broadcast over time.

    A carried state (m, c, a) acts like one extra token of logit m + log c and value a / c, placed
    first. With one query every logit is a single number, q·k_j: the kernel then runs on the logits
    as keys (each an fp32 value split into two of the inputs' dtype, hi + lo, against a query of
    ones), so the state's token needs no extra key dimension and any K up to 256 takes a state.
    """
    from dsf.terms import AarenState

    from .softmax import flash_attention

    q, k, v = terms.q, terms.k, terms.u                        # q [H, K], scale applied
    B, T, H, K = k.shape
    qs = q.expand(B, T, H, K)
    if state is not None:
        if cu_seqlens is not None:
            raise ValueError(f"{spec.name}: {state_arg} cannot be combined with cu_seqlens")
        # checked as the dsf forms check it: a wrong shape would broadcast into a silently wrong output
        # combined in fp32 whatever the state's dtype (a bf16 state's m + log c and a / c taken in bf16
        # were 1.5e-3 off where fp32 gives 1e-7), as every other family's state enters the kernels
        m, c, a = (x.float() for x in _internal_state(spec, terms, state, state_arg))
        # an empty state (c = 0) weighs 0: a logit far below any other, finite in the inputs' dtype
        empty = torch.finfo(k.dtype).min / 2
        logit = torch.where(c > 0, m + torch.log(c.clamp_min(1e-30)), torch.full_like(m, empty))
        s = torch.cat([logit[:, None].float(), torch.einsum("hk,bthk->bth", q.float(), k.float())], 1)
        hi = s.to(k.dtype)
        k2 = torch.stack([hi, (s - hi.float()).to(k.dtype)], -1)       # [B, T + 1, H, 2]: hi + lo = s
        v0 = torch.where(c[..., None] > 0, a / c.clamp_min(1e-30)[..., None], torch.zeros_like(a))
        o = flash_attention(torch.ones_like(k2), k2, torch.cat([v0[:, None].to(v.dtype), v], 1), scale=1.0)[:, 1:]
    else:
        o = flash_attention(qs.contiguous(), k, v, scale=1.0, cu_seqlens=cu_seqlens)
    if not output_final_state:
        return o, None
    if cu_seqlens is None:
        return o, _aaren_state(q, k, v, state)
    # a packed batch: each sequence's own state, stacked as a batch of N (an empty one stays empty)
    parts = [_aaren_state(q, k[:, a:b], v[:, a:b], None) for a, b in _bounds(cu_seqlens)]
    return o, AarenState(*(torch.cat(x) for x in zip(*parts)))


def _aaren_state(q: Tensor, k: Tensor, v: Tensor, state) -> Any:
    """Aaren's state (running max, denominator, numerator) after keys k and values v [B, T, H, ·],
    from ``state`` (None: empty)."""
    from dsf.terms import AarenState

    s = torch.einsum("hk,bthk->bht", q.float(), k.float())     # every logit of this call
    if s.shape[-1] == 0:   # no tokens: the state it came with (the empty state: m = −inf, c = a = 0)
        if state is not None:
            return AarenState(state.m.float(), state.c.float(), state.a.float())
        B, _, H, V = v.shape
        return AarenState(s.new_full((B, H), float("-inf")), s.new_zeros(B, H), s.new_zeros(B, H, V))
    M = s.amax(-1) if state is None else torch.maximum(state.m.float(), s.amax(-1))
    w = torch.exp(s - M[..., None])
    c_new = w.sum(-1)
    a_new = torch.einsum("bht,bthv->bhv", w, v.float())
    if state is not None:
        old = torch.where(torch.isinf(state.m), torch.zeros_like(M), torch.exp(state.m.float() - M))
        c_new, a_new = c_new + old * state.c.float(), a_new + old[..., None] * state.a.float()
    return AarenState(M, c_new, a_new)


def _bounds(cu_seqlens: Tensor) -> list[tuple[int, int]]:
    """(start, end) of each packed sequence."""
    c = cu_seqlens.tolist()
    return list(zip(c[:-1], c[1:]))


def _softmax(spec, terms, cache, output_final_state, cu_seqlens, state_arg="initial_state"):
    """Softmax attention through the flash kernels; the state is the KV cache (dsf.KVCache)."""
    if terms.shared_query:
        return _aaren(spec, terms, cache, output_final_state, cu_seqlens, state_arg)
    from dsf.forms.recurrent import _trim_cache

    from .softmax import flash_attention, flash_decode

    q, k, v = terms.query(), terms.k, terms.u            # q carries the scale already
    B, T = k.shape[:2]
    opts = dict(scale=1.0, window=terms.window, sink_tokens=terms.sink_tokens)
    if cache is None:
        o = flash_attention(q, k, v, cu_seqlens=cu_seqlens, **opts)
        start = 0
    else:
        if cu_seqlens is not None:
            raise ValueError(f"{spec.name}: {state_arg} cannot be combined with cu_seqlens")
        # checked as the dsf forms check it (a wrong-sized cache was a bare torch.cat error)
        _internal_state(spec, terms, cache, state_arg)
        # (a cache on another device was torch.cat's bare "not on the expected device")
        check_device(spec.name, q=q, **{f"{state_arg}.k": cache.k, f"{state_arg}.v": cache.v})
        L = cache.k.shape[1]
        # the kernels never read pos: they place the cached tokens at 0 … L − 1 and this call's after
        # them. A full cache is at those places; a windowed one trimmed by the forms keeps its sinks
        # at 0 … S − 1 and a run of the latest tokens just before this call's, so every distance the
        # window mask measures between a run token and a new one, and every sink, is where the kernels
        # put it. Any other cache would be attended as if it were laid out so (the dsf forms read pos).
        if cache.pos.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{spec.name}: {state_arg}.pos must be an int32/int64 tensor, got {cache.pos.dtype}")
        _check_cache_layout(spec, terms, cache, state_arg)
        # a cache kept in another dtype than this call's tokens joins them in theirs, as a state does
        k_all = torch.cat([cache.k.to(k.dtype), k], 1)
        v_all = torch.cat([cache.v.to(v.dtype), v], 1)
        # flash_decode has no backward: one token that needs a gradient takes the differentiable kernel
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k_all, v_all))
        if T == 1 and not needs_grad:
            o = flash_decode(q, k_all, v_all, **opts)
        else:
            q_all = torch.cat([q.new_zeros(B, L, *q.shape[2:]), q], 1)
            o = flash_attention(q_all, k_all, v_all, **opts)[:, L:]
        k, v, start = k_all, v_all, cache.seen
    if not output_final_state:
        return o, None
    if cu_seqlens is not None:
        # a packed batch: one cache per sequence (batch 1 each; their lengths differ, so a list)
        return o, [_trim_cache(terms, k[:, a:b], v[:, a:b], torch.arange(b - a, device=k.device), b - a)
                   for a, b in _bounds(cu_seqlens)]
    pos = torch.arange(start, start + T, device=k.device)
    if cache is not None:
        pos = torch.cat([cache.pos.to(device=k.device, dtype=torch.int64), pos])
    return o, _trim_cache(terms, k, v, pos, start + T)


def _check_cache_layout(spec, terms, cache, state_arg: str) -> None:
    """Refuse a KV cache the kernels would misplace (see _softmax): they take one whose positions are
    0 … L − 1 (full) or, with a window, the S sinks 0 … S − 1 then a run ending at seen − 1 that holds
    every token the window still shows."""
    L, seen = cache.k.shape[1], cache.seen
    S, W = terms.sink_tokens, terms.window
    m = min(S, L)
    # the one layout it may have, compared on the cache's device (one read-back a call, as before: a
    # decoding step runs this every token)
    if seen == L:
        expected = torch.arange(L, device=cache.pos.device)
    elif W is not None and seen > L and m == S and L - m >= min(W - 1, seen - m):   # (every sink kept)
        d = cache.pos.device
        expected = torch.cat([torch.arange(m, device=d), torch.arange(seen - (L - m), seen, device=d)])
    else:
        expected = None
    if expected is not None and bool((cache.pos == expected).all()):
        return
    pos = cache.pos[:8].tolist()
    shown = f"{pos}{' …' if L > 8 else ''} (seen = {seen})"
    if W is None:
        raise ValueError(f"{spec.name}: {state_arg}.pos must be a full cache's positions 0 … {L - 1} with "
                         f"seen = {L}, got {shown}")
    sinks = f"the {S} sink(s) 0 … {S - 1}, then " if S else ""
    raise ValueError(f"{spec.name}: {state_arg} must be a full KV cache (positions 0 … L − 1) or one trimmed "
                     f"as the forms trim it ({sinks}the last ≥ {W - 1} tokens up to seen − 1); got positions "
                     f"{shown}")


def compile(mixer: str | MixerSpec, **options: Any) -> CompiledMixer:  # noqa: A001 - the brief's name
    """Kernels for a spec or zoo name (options as in ``dsf.zoo.get``)."""
    spec = _spec(mixer)
    if options:   # (their values checked now: compile("mamba2", scale="x") succeeded, the first call failed)
        spec = spec.with_options(**options)
        check_options(spec)
    return CompiledMixer(spec)
