"""The DSF mixer spec: one declaration per mixer, from which every form is derived.

A mixer is the linear time-varying system

    h_t = Λ_t h_{t-1} + B_t u_t,        y_t = C_t h_t + D_t u_t

whose matrices are formed from the mixer's inputs. A :class:`MixerSpec` names the inputs (with their
shapes), the structure of Λ_t (which decides the fast algorithm), the state's shape, and a ``lower``
function that turns raw inputs into the canonical *terms* of the recurrence (:mod:`dsf.terms`). The
forms in :mod:`dsf.forms` only ever see terms, never a mixer by name.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

__all__ = ["Transition", "Input", "MixerSpec", "Miras", "FORMS", "resolve_inputs"]

# The exact forms a spec can have. A spec lists those it has in ``exact_forms``; "parallel" stands for
# both ``dsf.parallel`` and ``dsf.phi`` (the operator Φ). Every mixer has the recurrent form.
FORMS = ("recurrent", "parallel", "chunked")


class Transition(str, enum.Enum):
    """Structure of the transition Λ_t; it decides which chunked algorithm applies."""

    IDENTITY = "identity"
    CONST_SCALAR = "constant scalar per head"
    SCALAR = "data-dependent scalar per head"
    KEY_DIAG = "key-wise diagonal"
    VALUE_DIAG = "value-wise diagonal"
    CHANNEL_STATE_DIAG = "per-(channel, state) diagonal"
    DELTA = "identity minus rank one"
    GATED_DELTA = "gated identity minus rank one"
    SOFTMAX = "normalised exponential kernel"
    # A state update that is a gradient step on an inner loss (Titans/Miras) is a further member; its
    # terms class carries the loss, so the spec itself needs no new fields.
    GRADIENT_STEP = "gradient step on an inner loss"

    def __str__(self) -> str:  # the table prints the words, not the enum name
        return self.value


@dataclass(frozen=True)
class Input:
    """A named input of a mixer: its dims as symbols, e.g. ``("B", "T", "H", "K")``."""

    name: str
    dims: tuple[str, ...]
    doc: str = ""
    optional: bool = False
    # a log decay (g <= 0): the forms refuse a positive value, the usual slip of passing the decay itself
    nonpositive: bool = False


@dataclass(frozen=True)
class Miras:
    """Where a mixer sits on the four axes of Miras (Behrouz et al. 2025, "It's All Connected").

    ``memory``: the architecture of the memory M (vector, matrix, MLP, non-parametric);
    ``bias``: the attentional bias, the inner loss ℓ(M; k, v) the memory minimises;
    ``retention``: the gate that keeps it close to its past; ``algorithm``: how it learns (GD, GD
    with momentum, implicit GD, non-parametric). The strings are for tables; ``dsf.zoo.memory``
    builds a spec from the four choices.
    """

    memory: str
    bias: str
    retention: str
    algorithm: str


@dataclass(frozen=True)
class MixerSpec:
    """One mixer, declared once as a DSF recurrence.

    ``lower(**tensors, **options)`` returns the terms (:mod:`dsf.terms`) every form consumes;
    ``oracle(**tensors, **options)`` is an independent step-by-step loop written from the paper, run
    from a zero state, used by the tests to hold the generic forms to account.

    ``exact_forms`` is a capability flag: the subset of :data:`FORMS` that computes this mixer
    exactly (a tuple, or a function of the options returning one). A memory updated by a gradient
    step on a nonlinear loss has a recurrent form only; the forms raise a clear error for the others,
    and the tests and ``dsf check`` compare only the forms listed. A ``random_inputs`` that takes an
    ``options`` keyword receives the options bound by :meth:`with_options` (e.g. an option that
    changes which inputs the mixer takes).
    """

    name: str
    family: str
    transition: Transition
    inputs: tuple[Input, ...]
    lower: Callable[..., Any]
    state_dims: tuple[str, ...]
    state_size: str
    citation: str
    description: str
    options: Mapping[str, Any] = field(default_factory=dict)
    state_numel: Callable[[Mapping[str, int]], float] | None = None
    normaliser: str | None = None
    oracle: Callable[..., Any] | None = None
    random_inputs: Callable[..., dict] | None = None
    phi_layout: str = "head"  # "head": Φ is [B, H, T, T]; "channel": [B, H, V, T, T]
    exact_forms: tuple[str, ...] | Callable[[Mapping[str, Any]], tuple[str, ...]] = FORMS
    miras: Miras | None = None

    def with_options(self, **options: Any) -> "MixerSpec":
        """The same mixer with some option defaults changed (e.g. ``feature_map="elu1"``)."""
        unknown = set(options) - set(self.options)
        if unknown:
            raise TypeError(
                f"{self.name}: unknown option(s) {sorted(unknown)}; options are {sorted(self.options)}"
            )
        merged = {**self.options, **options}
        sample = self.random_inputs
        if sample is not None and _takes_options(sample):
            sample = functools.partial(sample, options=merged)  # a partial's keywords are kept
        return dataclasses.replace(self, options=merged, random_inputs=sample)

    def draw_inputs(self, B: int, T: int, H: int, K: int, V: int, **kw: Any) -> dict:
        """``random_inputs(B, T, H, K, V, **kw)``, or a clear error for a spec declared without it."""
        if self.random_inputs is None:
            raise TypeError(f"{self.name}: the spec has no random_inputs; give its MixerSpec "
                            "random_inputs=fn(B, T, H, K, V, dtype=, device=, seed=) -> dict of valid inputs "
                            "(dsf.random_inputs, dsf check, dsf phi and the zoo's forms column draw with it)")
        return self.random_inputs(B, T, H, K, V, **kw)

    def forms(self) -> tuple[str, ...]:
        """The exact forms of this mixer under its current options (a subset of :data:`FORMS`)."""
        found = self.exact_forms(self.options) if callable(self.exact_forms) else self.exact_forms
        return tuple(f for f in FORMS if f in found)

    def run_oracle(self, **inputs: Any) -> torch.Tensor:
        """The hand-written loop's output (from a zero state) with this spec's options."""
        if self.oracle is None:
            raise ValueError(f"{self.name} has no oracle loop")
        tensors, options = self.split_kwargs(inputs)
        return self.oracle(**tensors, **options)

    @functools.cached_property
    def input_names(self) -> tuple[str, ...]:
        # cached: every call of every form looks it up several times (a decoding step ~10)
        return tuple(i.name for i in self.inputs)

    def split_kwargs(self, kwargs: Mapping[str, Any]) -> tuple[dict, dict]:
        """Separate tensor inputs from options, rejecting anything the mixer does not take."""
        tensors, options = {}, dict(self.options)
        for key, value in kwargs.items():
            if key in self.input_names:
                tensors[key] = value
            elif key in self.options:
                options[key] = value
            else:
                raise TypeError(
                    f"{self.name}: unexpected argument {key!r}; inputs are {list(self.input_names)}, "
                    f"options are {sorted(self.options)}"
                )
        for inp in self.inputs:
            if inp.name not in tensors or tensors[inp.name] is None:
                if not inp.optional:
                    raise TypeError(
                        f"{self.name}: missing input {inp.name!r} of shape [{', '.join(inp.dims)}]"
                    )
                tensors.pop(inp.name, None)
        return tensors, options


def _takes_options(fn: Callable[..., Any]) -> bool:
    try:
        return "options" in inspect.signature(getattr(fn, "func", fn)).parameters
    except (TypeError, ValueError):
        return False


_HALF = (torch.float16, torch.bfloat16)
ACTIVATIONS = ("q", "k", "v", "x")  # these inputs always share one dtype


def _fp32_beside_half(a: torch.dtype, b: torch.dtype) -> bool:
    """Gates kept in float32 next to bf16/fp16 activations is the usual mixed-precision setup."""
    return (a == torch.float32 and b in _HALF) or (b == torch.float32 and a in _HALF)


def resolve_inputs(spec: MixerSpec, tensors: Mapping[str, Any]) -> dict[str, int]:
    """Check ranks, dtypes and shared dims of the inputs; return the dims, e.g. ``{"B": 2, ...}``.

    Every error names the argument, what was expected and what was given.
    """
    dims: dict[str, int] = {}
    source: dict[str, str] = {}
    dtype, dtype_from, device = None, None, None
    for inp in spec.inputs:
        if inp.name not in tensors:
            continue
        x = tensors[inp.name]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{spec.name}: {inp.name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"{spec.name}: {inp.name} must be a floating-point tensor, got dtype {x.dtype}"
            )
        if dtype is None:
            dtype, dtype_from, device = x.dtype, inp.name, x.device
        elif x.dtype != dtype and not (inp.name not in ACTIVATIONS and _fp32_beside_half(x.dtype, dtype)):
            raise TypeError(
                f"{spec.name}: {inp.name} has dtype {x.dtype} but {dtype_from} has {dtype}; "
                "all inputs must share one dtype (gates and parameters may be float32 beside "
                "16-bit inputs)"
            )
        elif x.device != device:
            raise ValueError(
                f"{spec.name}: {inp.name} is on {x.device} but {dtype_from} is on {device}"
            )
        if x.dim() != len(inp.dims):
            layout = "[" + ", ".join(inp.dims) + "]"
            raise ValueError(
                f"{spec.name}: {inp.name} must have {len(inp.dims)} dims {layout}, "
                f"got {x.dim()} dims with shape {tuple(x.shape)}"
            )
        for sym, size in zip(inp.dims, x.shape):
            if sym in dims and dims[sym] != size:
                layout = "[" + ", ".join(inp.dims) + "]"
                raise ValueError(
                    f"{spec.name}: {inp.name} has {sym}={size} (shape {tuple(x.shape)} for {layout}) "
                    f"but {source[sym]} has {sym}={dims[sym]}"
                )
            dims.setdefault(sym, size)
            source.setdefault(sym, inp.name)
    if dims.get("T", 1) < 1:
        raise ValueError(f"{spec.name}: sequence length T must be >= 1, got {dims['T']}")
    for sym, size in dims.items():
        # (an empty batch or head dim made some forms return empties and others fail inside torch)
        if size < 1:
            raise ValueError(f"{spec.name}: {source[sym]} has {sym}=0 (shape {tuple(tensors[source[sym]].shape)}); "
                             f"every dim must be >= 1")
    return dims


def check_state(name: str, arg: str, state: Any, expected: tuple[int, ...], dims_text: str,
                dtype: torch.dtype) -> None:
    """Raise a clear error unless ``state`` is a floating tensor of shape ``expected``."""
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(state).__name__}")
    if tuple(state.shape) != tuple(expected):
        raise ValueError(
            f"{name}: {arg} must have shape {dims_text} = {tuple(expected)}, got {tuple(state.shape)}"
        )
    if not state.is_floating_point():
        raise TypeError(f"{name}: {arg} must be floating-point, got dtype {state.dtype}")
