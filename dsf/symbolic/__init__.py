"""Symbolic (sympy) checks of the DSF: Φ derived from the recurrence, and identities of the zoo.

:func:`memory_identities` (in :mod:`dsf.symbolic.memory`) covers the mini-batch approximation of
gradient-step memories: exact for the dot-product bias, and the exact gap for the ℓ2 bias.

>>> import dsf.symbolic as sym
>>> sym.phi_entries("scalar", 2)[1, 0]
a_1*k_0_0*q_1_0 + a_1*k_0_1*q_1_1
>>> [i.name for i in sym.identities()][:2]
['normalized_linear_attention', 'reversed_sigmoid_is_s6']
"""

from .identities import (chunked_equals_recurrent_diagonal, gated_deltanet_update, identities,
                         normalized_linear_attention, reversed_sigmoid_is_s6, softmax_states_merge,
                         titans_linear_is_gated_delta, titans_update, ttt_linear_is_deltanet)
from .identity import Identity, canonical, is_zero
from .memory import (leading_order, memory_identities, minibatch_closed_form,
                     minibatch_equals_recurrent_dot, minibatch_gap_l2)
from .phi import (STRUCTURES, PhiSymbols, decay_product, phi_closed_form, phi_entries,
                  phi_symbols, step_diagonal)

__all__ = ["Identity", "canonical", "is_zero", "STRUCTURES", "PhiSymbols", "phi_symbols",
           "phi_entries", "phi_closed_form", "decay_product", "step_diagonal", "identities",
           "normalized_linear_attention", "reversed_sigmoid_is_s6",
           "chunked_equals_recurrent_diagonal", "titans_linear_is_gated_delta", "ttt_linear_is_deltanet",
           "softmax_states_merge", "titans_update",
           "gated_deltanet_update", "memory_identities", "minibatch_equals_recurrent_dot",
           "minibatch_closed_form", "minibatch_gap_l2", "leading_order"]
