"""The zoo: every mixer as a named :class:`~dsf.spec.MixerSpec`.

>>> import dsf
>>> "gated_deltanet" in dsf.zoo.names()
True
>>> dsf.zoo.get("linear_attention", feature_map="elu1").options["feature_map"]
'elu1'
"""

from __future__ import annotations

from typing import Any

from ..spec import MixerSpec
from .attention import AAREN, SOFTMAX_ATTENTION
from .decay import GLA, LIGHTNING_ATTENTION, MAMBA2, RETNET
from .delta import DELTANET, GATED_DELTANET, LONGHORN
from .linear import LINEAR_ATTENTION, NORMALIZED_ATTENTION
from .miras import MEMORA, MONETA, TITANS, TTT_LINEAR, TTT_MLP, YAAD
from .rnn import MINGRU, QLSTM, RG_LRU
from .ssm import LONGHORN_DIAG, S4D, S6

__all__ = ["names", "get", "register", "specs"]

_REGISTRY: dict[str, MixerSpec] = {}


def register(spec: MixerSpec, *, replace: bool = False) -> MixerSpec:
    """Add a spec to the zoo under its name (so ``dsf.recurrent(name, ...)`` finds it); a name already
    taken is a ``ValueError`` unless ``replace=True``. Returns the spec."""
    if not isinstance(spec, MixerSpec):
        raise TypeError(f"register takes a dsf.MixerSpec, got {type(spec).__name__} {spec!r}")
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"a mixer named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def names() -> list[str]:
    """The registered mixer names, in the order of the zoo table."""
    return list(_REGISTRY)


def specs() -> list[MixerSpec]:
    """The registered specs, in the order of the zoo table."""
    return list(_REGISTRY.values())


def get(name: str, **options: Any) -> MixerSpec:
    """The spec registered under ``name``, with option defaults overridden by ``options``."""
    if not isinstance(name, str):
        raise TypeError(f"mixer must be a zoo name (str) or a MixerSpec, got {type(name).__name__}")
    try:
        spec = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown mixer {name!r}; the zoo has: {', '.join(_REGISTRY)}") from None
    return spec.with_options(**options) if options else spec


for _spec in (SOFTMAX_ATTENTION, LINEAR_ATTENTION, NORMALIZED_ATTENTION, RETNET, LIGHTNING_ATTENTION,
              MAMBA2, GLA, S4D, S6, LONGHORN_DIAG, QLSTM, RG_LRU, MINGRU, DELTANET, GATED_DELTANET, LONGHORN,
              AAREN, TITANS, MONETA, YAAD, MEMORA, TTT_LINEAR, TTT_MLP):
    register(_spec)
del _spec
