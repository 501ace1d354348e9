"""Sequence models built from MixerLayers, bottom-up: norm, MLP, Block, Backbone, then the two heads.

``SequenceModel`` reads continuous tokens (in-context regression: a read-in Linear, blocks, a
read-out Linear); ``TokenModel`` reads token ids (MQAR, language modelling: embedding, blocks, LM
head). Every size is a typed constructor argument, so LightningCLI builds them from YAML.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

import dsf

from .layers import MixerLayer, check_mixer

__all__ = ["Block", "Backbone", "SequenceModel", "TokenModel"]

Norm = Literal["rmsnorm", "layernorm", "none"]


def make_norm(kind: str, d: int) -> nn.Module:
    if kind == "rmsnorm":
        return nn.RMSNorm(d)
    if kind == "layernorm":
        return nn.LayerNorm(d)
    if kind == "none":  # the 1-layer linear-attention ICL setups have no norm
        return nn.Identity()
    raise ValueError(f"norm must be 'rmsnorm', 'layernorm' or 'none', got {kind!r}")


class MLP(nn.Sequential):
    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model),
                         nn.Dropout(dropout))


class Block(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))``, then ``x + mlp(norm(x))`` if mlp_ratio > 0."""

    def __init__(self, mixer: MixerLayer, d_model: int, mlp_ratio: float = 4.0, norm: str = "rmsnorm",
                 dropout: float = 0.0):
        super().__init__()
        self.norm1, self.mixer = make_norm(norm, d_model), mixer
        self.drop = nn.Dropout(dropout)
        hidden = int(round(mlp_ratio * d_model))
        self.norm2 = make_norm(norm, d_model) if hidden > 0 else None
        self.mlp = MLP(d_model, hidden, dropout) if hidden > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.mixer(self.norm1(x)))
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x


class Backbone(nn.Module):
    """A stack of Blocks over ``[B, T, d_model]``, with a final norm; the base of both models.

    Args:
        mixer: a ``dsf.zoo`` name (``dsf zoo`` lists them).
        d_model, n_layers, n_heads, head_dim, state_dim: sizes (see MixerLayer).
        mlp_ratio: MLP hidden width / d_model; 0 means no MLP.
        norm: "rmsnorm", "layernorm" or "none".
        dropout: after the mixer and the MLP.
        backend: "auto", "reference" (dsf.chunked) or "triton" (kernels).
        chunk_size: of the reference form (None: MixerLayer's default).
        max_len: > 0 adds learned absolute position embeddings for positions < max_len.
        approximate: "minibatch" for test-time memories without an exact chunked form (MixerLayer).
        mixer_options: the spec's options, e.g. ``{"feature_map": "elu1"}``. For
            lightning_attention, layer_idx / num_layers are filled in per block.
    """

    def __init__(self, mixer: str = "softmax_attention", d_model: int = 64, n_layers: int = 2,
                 n_heads: int = 1, head_dim: int | None = None, state_dim: int = 16,
                 mlp_ratio: float = 4.0, norm: Norm = "rmsnorm", dropout: float = 0.0,
                 backend: Literal["auto", "reference", "triton"] = "auto", chunk_size: int | None = None,
                 max_len: int = 0, approximate: Literal["minibatch"] | None = None,
                 mixer_options: dict[str, Any] | None = None):
        super().__init__()
        check_mixer(mixer)  # first, so a typo fails before anything is built
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive int, got {n_layers!r}")
        if mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be >= 0, got {mlp_ratio!r}")
        if max_len < 0:
            raise ValueError(f"max_len must be >= 0, got {max_len!r}")
        self.mixer, self.d_model, self.max_len = mixer, d_model, max_len
        opts = dict(mixer_options or {})
        layer_aware = {"layer_idx", "num_layers"} <= set(dsf.zoo.get(mixer).options)
        blocks = []
        for i in range(n_layers):
            o = {**opts, "layer_idx": i, "num_layers": n_layers} if layer_aware else opts
            layer = MixerLayer(mixer, d_model, n_heads, head_dim, backend=backend, chunk_size=chunk_size,
                               state_dim=state_dim, approximate=approximate, **o)
            blocks.append(Block(layer, d_model, mlp_ratio, norm, dropout))
        self.blocks = nn.ModuleList(blocks)
        self.pos = nn.Embedding(max_len, d_model) if max_len > 0 else None
        self.norm = make_norm(norm, d_model)

    def mix(self, h: Tensor) -> Tensor:
        """``h [B, T, d_model]`` → ``[B, T, d_model]`` through the blocks."""
        if self.pos is not None:
            T = h.shape[1]
            if T > self.max_len:
                raise ValueError(f"sequence length {T} exceeds max_len={self.max_len}")
            h = h + self.pos(torch.arange(T, device=h.device))
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.mix(x)


class SequenceModel(Backbone):
    """Continuous tokens ``[B, T, d_in]`` → ``[B, T, d_out]`` (read-in, blocks, read-out)."""

    def __init__(self, d_in: int, d_out: int = 1, **kwargs: Any):
        super().__init__(**kwargs)
        for arg, val in (("d_in", d_in), ("d_out", d_out)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"SequenceModel: {arg} must be a positive int, got {val!r}")
        self.d_in, self.d_out = d_in, d_out
        self.read_in = nn.Linear(d_in, self.d_model)
        self.read_out = nn.Linear(self.d_model, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.read_out(self.mix(self.read_in(x)))


class TokenModel(Backbone):
    """Token ids ``[B, T]`` → logits ``[B, T, vocab_size]`` (embedding, blocks, LM head)."""

    def __init__(self, vocab_size: int, tie_weights: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"TokenModel: vocab_size must be an int >= 2, got {vocab_size!r}")
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, self.d_model)
        self.head = nn.Linear(self.d_model, vocab_size, bias=False)
        if tie_weights:
            self.head.weight = self.embed.weight

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.mix(self.embed(ids)))
