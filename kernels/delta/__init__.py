"""Delta-rule family kernels (DeltaNet, Gated DeltaNet): chunked WY/UT (training) and fused recurrent."""

from .chunk import CHUNK_SIZES, chunk_delta
from .recurrent import CHECKPOINT_INTERVAL, delta_step, fused_recurrent_delta

__all__ = ["chunk_delta", "fused_recurrent_delta", "delta_step", "CHECKPOINT_INTERVAL", "CHUNK_SIZES"]
