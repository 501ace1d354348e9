"""MixerLayer: input projections, one dsf zoo mixer, an output projection.

The layer is the mixer alone, the same frame for all: none of the short convolutions, output gates
(SiLU / z-gates) or output norms that the papers' blocks add around their mixers (Mamba-2, GLA,
RetNet, DeltaNet, Gated DeltaNet, Longhorn, Griffin's RG-LRU block, Titans), so mixers are compared
on their recurrences; recall tasks, where those parts help, show it most. An MLP memory's hidden
width is ``state_dim`` (the papers use wider, e.g. TTT-MLP 4·K).

What to build is read off the spec's inputs: an input with a time dim ``[B, T, H, ·]`` becomes a
projection of the d_model stream (``Linear(d_model, H·K)``, ``Linear(d_model, H)``, ...); a
time-invariant input ``[H, ...]`` becomes an ``nn.Parameter``. Small tables say what the papers do
on top: ``NAMED`` (activation by input name: g, beta, theta, ...), ``GATES`` (per-mixer exceptions:
Mamba's Δ, GLA's low-rank gate), ``PARAMS`` (init and positivity map of a parameter), ``OPTIONAL``
and ``EXTRA``. A mixer missing from them still builds, with plain projections and ``N(0, 1/fan_in)``
parameters; a dim the layer cannot size is a clear error.

>>> layer = MixerLayer("gated_deltanet", d_model=32, n_heads=2)
>>> layer(torch.randn(2, 10, 32)).shape
torch.Size([2, 10, 32])
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import dsf
from dsf.forms import check_options

__all__ = ["MixerLayer", "check_mixer", "default_chunk_size", "BACKENDS"]

BACKENDS = ("auto", "reference", "triton")


def check_mixer(name: Any) -> str:
    """Return ``name`` if it is a zoo mixer, else raise a ValueError listing the zoo."""
    if not isinstance(name, str) or name not in dsf.zoo.names():
        raise ValueError(f"unknown mixer {name!r}; choose one of: {', '.join(dsf.zoo.names())}")
    return name


# -- inits -------------------------------------------------------------------------------------------
def _inv_softplus(x: Tensor) -> Tensor:
    return x + torch.log(-torch.expm1(-x))


def _log_uniform(shape, lo: float, hi: float) -> Tensor:
    return torch.exp(torch.rand(shape) * (math.log(hi) - math.log(lo)) + math.log(lo))


def _dt_bias(shape) -> Tensor:
    """Mamba's Δ init: softplus(bias) log-uniform in [1e-3, 0.1]."""
    return _inv_softplus(_log_uniform(shape, 1e-3, 0.1))


def _s4d_real_log(shape) -> Tensor:
    """log A with S4D-Real / Mamba's A_n = n for n = 1..N along the last dim."""
    N = shape[-1]
    return torch.log(torch.arange(1, N + 1, dtype=torch.float32)).expand(shape).clone()


def _rg_lru_lam(shape) -> Tensor:
    """RG-LRU's Λ as recurrentgemma's code sets it (``rnn_param_init``, min_rad 0.9, max_rad 0.999):
    σ(Λ) = a₀ with a₀² uniform in [0.9², 0.999²], so the decay a_t = σ(Λ)^{c σ(r_t)} starts near
    a₀^{c/2} ∈ [0.66, 0.996] (until 2026-12-05 this put σ(Λ)^c in [0.9, 0.999]: far longer memories)."""
    a = torch.sqrt(torch.rand(shape) * (0.999 ** 2 - 0.9 ** 2) + 0.9 ** 2)
    return torch.log(a) - torch.log1p(-a)


def _default_param(shape) -> Tensor:
    """N(0, 1/fan_in): per-head matrices [H, in, out] (e.g. an MLP memory's initial weights)."""
    return torch.randn(shape) / math.sqrt(shape[-2] if len(shape) >= 3 else shape[-1])


def _identity(p: Tensor) -> Tensor:
    return p


@dataclass(frozen=True)
class Param:
    """A time-invariant input: learned ``raw`` with this init, fed to the mixer as ``fn(raw)``."""

    init: Callable[[tuple[int, ...]], Tensor]
    fn: Callable[[Tensor], Tensor] = _identity


_DEFAULT = Param(_default_param)
_POSITIVE_EXP = dict(fn=torch.exp)
# (mixer, input) -> Param. Positive rates are learned in log space, as the papers do.
PARAMS: dict[tuple[str, str], Param] = {
    ("s4d", "dt"): Param(lambda s: torch.log(_log_uniform(s, 1e-3, 0.1)), **_POSITIVE_EXP),
    ("s4d", "A"): Param(_s4d_real_log, **_POSITIVE_EXP),
    ("s4d", "B"): Param(torch.ones),
    ("s4d", "C"): Param(lambda s: torch.randn(s) / math.sqrt(s[-1])),
    ("s4d", "D"): Param(torch.ones),
    ("s6", "A"): Param(_s4d_real_log, **_POSITIVE_EXP),
    ("s6", "D"): Param(torch.ones),
    ("longhorn_diag", "D"): Param(torch.ones),
    ("rg_lru", "Lam"): Param(_rg_lru_lam),
    ("qlstm", "a"): Param(torch.ones),
    ("aaren", "q"): Param(torch.randn),
    # KL retention keeps each column of the MLP memory a distribution (W = c·softmax(α log W + U)):
    # learned through a softmax, it starts and stays on the simplex as the spec's random_inputs do.
    # Raw N(0, 1/fan_in) weights left half the entries <= 0, clamped to log 1e-30: dead from the start.
    ("memora", "w1"): Param(_default_param, fn=lambda p: torch.softmax(p, dim=-2)),
    ("memora", "w2"): Param(_default_param, fn=lambda p: torch.softmax(p, dim=-2)),
    # hedgehog's learned feature map starts as softmax(±x) (identity projection)
    ("linear_attention", "feature_weight"): Param(lambda s: torch.eye(s[-2], s[-1]).expand(s).clone()),
}

# Optional inputs that the layer learns, with the options under which they take effect. The rest
# keep the spec's default (RetNet's fixed γ, Performer's fixed random features).
OPTIONAL: dict[tuple[str, str], Callable[[dict], bool]] = {
    ("s4d", "D"): lambda o: True,
    ("s6", "D"): lambda o: True,
    ("longhorn_diag", "D"): lambda o: True,
    ("qlstm", "a"): lambda o: bool(o.get("reversed")),
    ("linear_attention", "feature_weight"): lambda o: o.get("feature_map") == "hedgehog",
    ("titans", "w1"): lambda o: o.get("memory", "mlp") == "mlp",
    ("titans", "w2"): lambda o: o.get("memory", "mlp") == "mlp",
}


@dataclass(frozen=True)
class Gate:
    """How a projected input is made: optional bottleneck rank, bias init, activation."""

    act: Callable[..., Tensor] | None = None   # act(layer, raw, inputs) -> tensor
    rank: int | Callable[[int], int] | None = None
    bias: Callable[[tuple[int, ...]], Tensor] | None = None


def _ssd_decay(scale_v: bool):
    """Mamba-2 / Gated DeltaNet: g = −exp(A_log)·Δ with Δ = softplus(Wx + dt_bias); Mamba-2 also
    feeds Δ·B."""
    def act(layer, raw, inputs):
        dt = F.softplus(raw)                           # the dt_bias is the projection's bias
        if scale_v:
            inputs["k"] = inputs["k"] * dt[..., None]  # Euler: B̄ = Δ B, keeps the state O(1/A)
        return -torch.exp(layer.A_log) * dt
    return act


def _const(value: float):
    return lambda s: torch.full(s, value)


_SIGMOID = Gate(lambda m, r, i: torch.sigmoid(r))
# A retention / momentum gate exp(g) = σ(raw), biased to keep ≈ 0.95 (resp. 0.9) per token at init.
# An MLP memory (Titans, Yaad) whose inner steps are small decays toward W = 0 at that rate, where a
# bias-free MLP's inner gradient vanishes: over ~100 tokens its learned initial weights fade out
# unless the gate learns to keep more. The sequences of this package's tasks are 22-64 tokens.
_RETAIN = Gate(lambda m, r, i: F.logsigmoid(r), bias=_const(3.0))

# By input name, for any mixer: the meaning the zoo gives these names (docs of dsf.zoo inputs)
NAMED: dict[str, Gate] = {
    "g": _RETAIN, "gk": _RETAIN,                  # log decays <= 0
    "beta": _SIGMOID,                             # write strength in (0, 1)
    # inner step size θ = σ(raw) > 0, ≈ 0.12 at init: small steps as Titans / TTT (lr ~ 1e-2..1e-1);
    # θ ≈ 0.5 diverged for Titans' MLP memory with momentum
    "theta": Gate(lambda m, r, i: torch.sigmoid(r), bias=_const(-2.0)),
    "log_eta": Gate(lambda m, r, i: F.logsigmoid(r), bias=_const(2.0)),   # momentum decay <= 0
    # Longhorn's implicit step ε = σ(·) from a zero bias, 0.5 at init: its released code zeroes every
    # linear bias in _init_weights, and its ε head's bias is not exempted (Mamba's Δ bias is)
    "eps": Gate(lambda m, r, i: torch.sigmoid(r), bias=_const(0.0)),
}
# (mixer, input): where a paper parameterises differently
GATES: dict[tuple[str, str], Gate] = {
    ("mamba2", "g"): Gate(_ssd_decay(True), bias=_dt_bias),
    ("gated_deltanet", "g"): Gate(_ssd_decay(False), bias=_dt_bias),
    # GLA: low-rank gate, logsigmoid / 16 keeps the decay near 1 at init
    ("gla", "gk"): Gate(lambda m, r, i: F.logsigmoid(r) / 16, rank=16),
    # Mamba-1: Δ = softplus(low-rank(x) + dt_bias), rank ⌈d_model/16⌉
    ("s6", "dt"): Gate(lambda m, r, i: F.softplus(r), rank=lambda d: math.ceil(d / 16), bias=_dt_bias),
    # the released Longhorn: ε = σ(low-rank(x) + bias), Mamba's rank ⌈d_model/16⌉, the bias from zero
    ("longhorn_diag", "eps"): Gate(lambda m, r, i: torch.sigmoid(r), rank=lambda d: math.ceil(d / 16),
                                   bias=_const(0.0)),
    # LSTM forget-gate bias 1 (Jozefowicz et al. 2015): remember by default
    ("qlstm", "f"): Gate(bias=_const(1.0)),
    # Titans: momentum η ≈ 0.9 multiplies the step by ~1/(1 − η), so θ = 0.01·σ(raw), titans-pytorch's
    # cap. With the generic θ ≈ 0.12 its MLP memory diverged by T = 64; with θ = 0.1·σ(raw) the
    # in-context regression sweep at d_model 64 went non-finite during training (GPU scale).
    ("titans", "theta"): Gate(lambda m, r, i: 0.01 * torch.sigmoid(r)),
    # TTT-MLP: inner learning rate η_base·σ(raw) with η_base = 0.1 (Sun et al. 2024 use 0.1 for the
    # MLP, 1 for the linear memory). With the generic σ(raw) a forward pass went non-finite after
    # 112 steps of the ICL sweep (d_model 32, CPU); capped at 0.1 it trained 300 steps cleanly.
    ("ttt_mlp", "theta"): Gate(lambda m, r, i: 0.1 * torch.sigmoid(r), bias=_const(-2.0)),
    # normalised attention's log normaliser n is a raw projection
    ("normalized_attention", "n"): Gate(),
}


def gate_of(mixer: str, name: str) -> Gate:
    return GATES.get((mixer, name)) or NAMED.get(name) or Gate()


# Gradient steps on ‖Sᵀk − v‖² (delta rule, test-time memories) contract only for ‖k‖ <= 1 and a
# step < 1 (or 2), so keys are L2-normalised; queries too, as in fla and Titans. Not Longhorn's: its
# implicit step contracts at any ‖k‖ (β‖k‖² = ε‖k‖²/(1 + ε‖k‖²) < 1), and on unit keys its β would be
# ε/(1 + ε), DeltaNet's under another name; its paper does not normalise them.
L2_QK = (dsf.Transition.DELTA, dsf.Transition.GATED_DELTA, dsf.Transition.GRADIENT_STEP)
RAW_QK = ("longhorn",)
# Per-head parameters beside the inputs: name -> init of shape [H]
EXTRA: dict[str, dict[str, Callable[[tuple[int, ...]], Tensor]]] = {
    "mamba2": {"A_log": lambda s: torch.log(torch.rand(s) * 15 + 1)},          # A ~ U(1, 16)
    "gated_deltanet": {"A_log": lambda s: torch.log(torch.rand(s) * 15 + 1)},
}


_VECTOR_DECAY = (dsf.Transition.KEY_DIAG, dsf.Transition.VALUE_DIAG, dsf.Transition.CHANNEL_STATE_DIAG)


def default_chunk_size(spec: dsf.MixerSpec) -> int:
    """64; 8 for vector decays: once a chunk's log decay exceeds ~20, dsf.chunked switches to its
    exact sub-block path, 10-20x slower on CPU than short chunks (S4D/S6's A goes up to N); 16 for
    test-time memories, the TTT mini-batch size (Titans' minibatch form diverged at 64, T = 256)."""
    if spec.transition == dsf.Transition.GRADIENT_STEP:
        return 16
    return 8 if spec.transition in _VECTOR_DECAY else 64


class _LowRank(nn.Sequential):
    def __init__(self, d_in: int, rank: int, d_out: int):
        super().__init__(nn.Linear(d_in, rank, bias=False), nn.Linear(rank, d_out))


def _one_activation_dtype(inputs: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
    """The kernels' inputs under autocast: q, k, v, x in its 16-bit dtype. Some come out float32
    beside the projections' 16-bit ones (CUDA autocast runs F.normalize and softplus in float32;
    Aaren's query is a float32 parameter), and the kernels take one activation dtype; gates may stay
    float32."""
    if not torch.is_autocast_enabled(x.device.type):
        return inputs
    half = torch.get_autocast_dtype(x.device.type)
    return {n: t.to(half) if n in dsf.spec.ACTIVATIONS else t for n, t in inputs.items()}


class MixerLayer(nn.Module):
    """Project ``[B, T, d_model]`` to a zoo mixer's inputs, run it, project back to d_model.

    Args:
        mixer: a ``dsf.zoo`` name.
        d_model: width of the residual stream.
        n_heads: H.
        head_dim: K = V per head (default d_model // n_heads); for the gated RNNs and SSMs, the
            channels per head.
        backend: "reference" runs ``dsf.chunked``; "triton" runs ``kernels.compile(spec).chunked``
            (CUDA, or TRITON_INTERPRET=1); "auto" takes the kernel when one exists and x is on CUDA (and not
            float64), and the dsf forms where the kernels refuse the head dims (over 256).
        chunk_size: chunk length of the reference form; default 64, or 8 for vector decays (see
            ``default_chunk_size``).
        state_dim: the state's extra size: N states per channel (s4d, s6), the hidden width E of
            an MLP memory (titans, ttt_mlp, the Miras mixers).
        approximate: "minibatch" runs a test-time memory with no exact chunked form (Titans' MLP,
            Miras) through the papers' mini-batch approximation; by default such a memory runs
            ``dsf.recurrent`` (exact, a loop over T).
        **mixer_options: the spec's options (``feature_map="elu1"``, ``window=16``, ...).
    """

    def __init__(self, mixer: str, d_model: int, n_heads: int = 1, head_dim: int | None = None,
                 backend: Literal["auto", "reference", "triton"] = "auto", chunk_size: int | None = None,
                 state_dim: int = 16, approximate: Literal["minibatch"] | None = None, **mixer_options: Any):
        super().__init__()
        check_mixer(mixer)
        self.spec = dsf.zoo.get(mixer, **mixer_options)
        if chunk_size is None:
            chunk_size = default_chunk_size(self.spec)
        for arg, val in (("d_model", d_model), ("n_heads", n_heads), ("chunk_size", chunk_size),
                         ("state_dim", state_dim)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"MixerLayer: {arg} must be a positive int, got {val!r}")
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"MixerLayer: d_model={d_model} is not divisible by n_heads={n_heads}; "
                                 "give head_dim")
            head_dim = d_model // n_heads
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
            raise ValueError(f"MixerLayer: head_dim must be a positive int, got {head_dim!r}")
        # the options' values now, not at the first forward (a bad feature_map or window crashed a run in
        # its sanity check)
        check_options(self.spec)
        if backend not in BACKENDS:
            raise ValueError(f"MixerLayer: backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "triton":
            import kernels

            if approximate:
                raise ValueError("MixerLayer: approximate='minibatch' runs in PyTorch; the Triton kernels "
                                 "are exact — use backend='reference' or 'auto'")
            if kernels.supports(self.spec) is None:
                raise ValueError(f"MixerLayer: no Triton kernel for {mixer!r}; use backend='reference' "
                                 "or 'auto'")
        if approximate not in (None, "minibatch"):
            raise ValueError(f"MixerLayer: approximate must be None or 'minibatch', got {approximate!r}")
        if approximate and self.spec.transition != dsf.Transition.GRADIENT_STEP:
            raise ValueError(f"MixerLayer: approximate='minibatch' is for test-time memories, not {mixer!r}")
        self.approximate = approximate
        exact = self.spec.forms() if hasattr(self.spec, "forms") else ("chunked",)
        self.form = "chunked" if approximate or "chunked" in exact else "recurrent"
        self.mixer, self.mixer_options = mixer, dict(mixer_options)
        self.backend, self.chunk_size = backend, chunk_size
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, head_dim
        self.sizes = {"H": n_heads, "K": head_dim, "V": head_dim, "N": state_dim, "E": state_dim,
                      "F": head_dim}
        for inp in self.spec.inputs:
            unknown = [d for d in inp.dims if d not in self.sizes and d not in ("B", "T")]
            if unknown:
                raise ValueError(f"MixerLayer: {mixer} input {inp.name!r} has dims {unknown} that the layer "
                                 f"cannot size (it knows {sorted(self.sizes)})")
        self.proj = nn.ModuleDict()
        self.params = nn.ParameterDict()
        opts = dict(self.spec.options)
        for inp in self.spec.inputs:
            key = (mixer, inp.name)
            if inp.optional and not OPTIONAL.get(key, lambda o: False)(opts):
                continue
            shape = tuple(self.sizes[d] for d in inp.dims if d not in ("B", "T"))
            if inp.dims[:2] == ("B", "T"):
                self.proj[inp.name] = self._projection(key, math.prod(shape))
            else:
                self.params[inp.name] = nn.Parameter(PARAMS.get(key, _DEFAULT).init(shape).float())
        for name, init in EXTRA.get(mixer, {}).items():
            self.register_parameter(name, nn.Parameter(init((n_heads,)).float()))
        self.out = nn.Linear(n_heads * head_dim, d_model)
        self._compiled = None
        self._kernels_refused = False

    # The spec holds the zoo's lambdas, which pickle cannot save: rebuild it from name and options.
    def __getstate__(self) -> dict:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = {k: v for k, v in state.items() if k not in ("spec", "_compiled")}
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.spec, self._compiled = dsf.zoo.get(self.mixer, **self.mixer_options), None

    def _projection(self, key, out_features: int) -> nn.Module:
        gate = gate_of(*key)
        rank = gate.rank(self.d_model) if callable(gate.rank) else gate.rank
        layer = _LowRank(self.d_model, rank, out_features) if rank else nn.Linear(self.d_model, out_features)
        if gate.bias is not None:
            lin = layer[-1] if isinstance(layer, _LowRank) else layer
            with torch.no_grad():
                lin.bias.copy_(gate.bias((out_features,)))
        return layer

    def extra_repr(self) -> str:
        return (f"mixer={self.mixer!r}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
                f"backend={self.backend!r}, form={self.form!r}")

    def mixer_inputs(self, x: Tensor) -> dict[str, Tensor]:
        """The mixer's keyword inputs for ``x [B, T, d_model]`` (the spec's order)."""
        B, T, _ = x.shape
        inputs: dict[str, Tensor] = {}
        for inp in self.spec.inputs:
            if inp.name in self.proj:
                shape = [self.sizes[d] for d in inp.dims[2:]]
                raw = self.proj[inp.name](x).view(B, T, *shape)
                gate = gate_of(self.mixer, inp.name)
                inputs[inp.name] = raw if gate.act is None else gate.act(self, raw, inputs)
            elif inp.name in self.params:
                # looked up, not stored: the tables' lambdas would make the module unpicklable
                inputs[inp.name] = PARAMS.get((self.mixer, inp.name), _DEFAULT).fn(self.params[inp.name])
        if self.spec.transition in L2_QK and self.mixer not in RAW_QK:
            inputs["q"] = F.normalize(inputs["q"], dim=-1)
            inputs["k"] = F.normalize(inputs["k"], dim=-1)
        return inputs

    def _use_kernels(self, x: Tensor) -> bool:
        if self.backend == "reference":
            return False
        if self.backend == "triton":
            if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
                raise RuntimeError("MixerLayer: backend='triton' needs CUDA tensors or TRITON_INTERPRET=1 "
                                   "(set before triton is imported)")
            return True
        if not x.is_cuda or self.approximate or x.dtype == torch.float64 or self._kernels_refused:
            # the kernels compute the exact memory, not the mini-batch approximation, and take
            # fp32/bf16/fp16 only (a float64 model runs the reference forms)
            return False
        import kernels

        return kernels.supports(self.spec) is not None

    def _kernels(self, inputs: dict[str, Tensor], x: Tensor) -> Tensor | None:
        """The mixer's output by its Triton kernel; None where "auto" finds the head dims outside
        what the kernels take (the dsf forms run instead: said once, in a warning)."""
        import kernels

        if self._compiled is None:
            self._compiled = kernels.compile(self.spec)
        try:
            return self._compiled.chunked(**_one_activation_dtype(inputs, x))[0]
        except kernels.UnsupportedHeadDim as e:
            if self.backend != "auto":
                raise
            # the head dims are the layer's own, so every later call would be refused the same way
            self._kernels_refused = True
            warnings.warn(f"MixerLayer(backend='auto'): {e}; running the dsf reference forms instead",
                          stacklevel=3)
            return None

    def _reference(self, inputs: dict[str, Tensor], x: Tensor) -> Tensor:
        """The mixer's output by the dsf forms. Under autocast the projections hand them 16-bit
        activations beside float32 parameters, which the forms' in-place products refuse: there
        they run in float32 with autocast off (the output projection casts back)."""
        amp = torch.is_autocast_enabled(x.device.type)
        if amp:
            inputs = {k: v.float() for k, v in inputs.items()}
        with torch.autocast(x.device.type, enabled=False) if amp else contextlib.nullcontext():
            if self.form == "recurrent":
                return dsf.recurrent(self.spec, **inputs)[0]
            # one chunk when T is shorter: the form pads a chunk to full length
            extra = {"approximate": self.approximate} if self.approximate else {}
            return dsf.chunked(self.spec, chunk_size=min(self.chunk_size, x.shape[1]), **extra, **inputs)[0]

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, T, d_model]`` → ``[B, T, d_model]``."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"MixerLayer: expected x of shape [B, T, {self.d_model}], got {tuple(x.shape)}")
        if x.shape[1] == 0:   # (the forms' chunk size became min(chunk_size, T) = 0: an error about chunk_size)
            raise ValueError(f"MixerLayer: x must hold at least one token (T >= 1), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"MixerLayer: x must be a floating-point tensor, got dtype {x.dtype}")
        weight = self.out.weight.dtype
        # (under autocast the projections cast x themselves)
        if x.dtype != weight and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"MixerLayer: x has dtype {x.dtype} but the layer's weights are {weight}; "
                            f"cast one to the other (layer.to({x.dtype})) or run under torch.autocast")
        inputs = self.mixer_inputs(x)
        o = self._kernels(inputs, x) if self._use_kernels(x) else None
        if o is None:
            o = self._reference(inputs, x)
        B, T = x.shape[:2]
        return self.out(o.reshape(B, T, -1).to(x.dtype))
