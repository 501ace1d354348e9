"""Softmax attention in Triton: flash-style tiled causal attention (forward + FlashAttention-2
backward) with sliding windows, sink tokens and varlen packing, and a fused decoding step.

The float64 reference is ``dsf.recurrent("softmax_attention", q=q, k=k, v=v, scale=..., window=...,
sink_tokens=...)``.
"""

from .decode import flash_decode
from .flash import FlashAttention, flash_attention

__all__ = ["flash_attention", "flash_decode", "FlashAttention"]
