"""SequenceModel / TokenModel: shapes, options, errors."""

import pytest
import torch

from models.model import Backbone, SequenceModel, TokenModel


def test_sequence_model_shapes_and_grad():
    torch.manual_seed(0)
    m = SequenceModel(d_in=6, d_out=1, mixer="gla", d_model=16, n_layers=2, n_heads=2)
    x = torch.randn(3, 10, 6)
    y = m(x)
    assert y.shape == (3, 10, 1)
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_token_model_shapes_and_causality():
    """Logits [B, T, V]; changing a later token leaves earlier logits unchanged."""
    torch.manual_seed(0)
    m = TokenModel(vocab_size=20, mixer="softmax_attention", d_model=16, n_layers=2, max_len=12)
    ids = torch.randint(20, (2, 12))
    out = m(ids)
    assert out.shape == (2, 12, 20)
    ids2 = ids.clone()
    ids2[:, 8] = (ids2[:, 8] + 1) % 20
    assert torch.allclose(m(ids2)[:, :8], out[:, :8], atol=1e-6)


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm", "none"])
@pytest.mark.parametrize("mlp_ratio", [0.0, 2.0])
def test_block_options(norm, mlp_ratio):
    m = SequenceModel(d_in=3, mixer="linear_attention", d_model=8, n_layers=1, norm=norm, mlp_ratio=mlp_ratio)
    assert (m.blocks[0].mlp is None) == (mlp_ratio == 0)
    assert m(torch.randn(1, 5, 3)).shape == (1, 5, 1)


def test_lightning_attention_gets_its_layer_index():
    m = Backbone(mixer="lightning_attention", d_model=8, n_layers=3)
    assert [b.mixer.spec.options["layer_idx"] for b in m.blocks] == [0, 1, 2]
    assert all(b.mixer.spec.options["num_layers"] == 3 for b in m.blocks)


def test_mixer_options_and_tied_weights():
    m = TokenModel(vocab_size=10, mixer="linear_attention", d_model=8, n_layers=1, tie_weights=True,
                   mixer_options={"feature_map": "elu1", "normalize": True})
    assert m.blocks[0].mixer.spec.options["feature_map"] == "elu1"
    assert m.head.weight is m.embed.weight


@pytest.mark.parametrize("kwargs,match", [
    (dict(mixer="nope"), "unknown mixer 'nope'; choose one of: softmax_attention"),
    (dict(n_layers=0), "n_layers"),
    (dict(norm="batchnorm"), "norm"),
    (dict(mlp_ratio=-1.0), "mlp_ratio"),
    (dict(d_in=0), "d_in"),
])
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SequenceModel(**{"d_in": 4, "d_model": 8, **kwargs})


def test_too_long_for_positions():
    m = TokenModel(vocab_size=10, d_model=8, n_layers=1, max_len=4)
    with pytest.raises(ValueError, match="exceeds max_len=4"):
        m(torch.zeros(1, 5, dtype=torch.long))
