"""Delta-rule family kernels (DeltaNet, Gated DeltaNet)."""

from .recurrent import CHECKPOINT_INTERVAL, delta_step, fused_recurrent_delta

__all__ = ["fused_recurrent_delta", "delta_step", "CHECKPOINT_INTERVAL"]
