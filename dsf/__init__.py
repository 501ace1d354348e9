"""dsf: every sequence mixer as one recurrence spec in the Dynamical Systems Framework.

    h_t = Λ_t h_{t-1} + B_t u_t,      y_t = C_t h_t + D_t u_t

A mixer is declared once (:class:`MixerSpec`); :func:`recurrent`, :func:`parallel` / :func:`phi` and
:func:`chunked` derive its exact forms. :mod:`dsf.zoo` holds the named mixers.
"""

from . import zoo
from .forms import chunked, parallel, phi, recurrent
from .spec import Input, MixerSpec, Transition
from .terms import AarenState, KVCache, LinearTerms, MemoryState, MemoryTerms, SoftmaxTerms

__version__ = "0.1.0"

__all__ = ["recurrent", "parallel", "phi", "chunked", "zoo", "MixerSpec", "Input", "Transition",
           "LinearTerms", "SoftmaxTerms", "MemoryTerms", "KVCache", "AarenState", "MemoryState",
           "random_inputs"]


def random_inputs(mixer, B=2, T=16, H=2, K=8, V=8, *, dtype=None, device=None, seed=None, **options):
    """Valid random inputs for a mixer (a dict of keyword tensors), float64 by default.

    ``options`` are the mixer's options, for the mixers whose inputs depend on them (e.g.
    ``memory="linear"`` for ``titans``, which then takes no MLP weights).
    """
    import torch

    spec = mixer if isinstance(mixer, MixerSpec) else zoo.get(mixer)
    if options:
        spec = spec.with_options(**options)
    return spec.draw_inputs(B, T, H, K, V, dtype=dtype or torch.float64, device=device, seed=seed)
