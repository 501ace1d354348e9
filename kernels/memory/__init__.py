"""The linear-memory family: Titans' matrix memory with momentum (ℓ2 bias, ℓ2 or no retention)."""

from .titans import chunk_titans, fused_recurrent_titans

__all__ = ["chunk_titans", "fused_recurrent_titans"]
