"""LightningModules: losses, per-position metrics, baselines, optimiser; a short MQAR run learns."""

import lightning as L
import pytest
import torch

from models import lit
from models.data import MQARDataModule, RegressionDataModule
from models.lit import MQARModule, RegressionModule
from models.model import SequenceModel, TokenModel


def _trainer(tmp_path, **kw):
    kw = {"max_steps": 2, "limit_val_batches": 2, "logger": False, "enable_checkpointing": False,
          "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
          "default_root_dir": tmp_path, **kw}
    return L.Trainer(accelerator="cpu", **kw)


def _regression(d=3, n=8, **kw):
    model = SequenceModel(d_in=d + 1, mixer="linear_attention", d_model=8, n_layers=1, mlp_ratio=0.0)
    dm = RegressionDataModule(d=d, n_points=n, batch_size=16, val_size=32, steps_per_epoch=2, **kw)
    return RegressionModule(model, lr=1e-2), dm


def test_regression_logs_per_position_and_baselines(tmp_path, monkeypatch):
    module, dm = _regression(noise_std=0.1)
    calls = []
    run = module._run_baselines
    monkeypatch.setattr(module, "_run_baselines", lambda p: calls.append(1) or run(p))
    trainer = _trainer(tmp_path, max_steps=4)      # two epochs: two validations
    trainer.fit(module, dm)
    m = trainer.callback_metrics
    assert {"train_loss", "val_loss", "val_err/pos_0", "val_err/pos_7"} <= set(m)
    for name in lit.BASELINES:
        assert f"val_err_{name}/pos_7" in m
    assert calls == [1]                             # computed once, logged at every validation
    # 7 > d = 3 earlier points: least squares is near the noise level, far below the zero predictor
    assert float(m["val_err_least_squares/pos_7"]) < 0.3 < float(m["val_err_least_squares/pos_0"])
    # val_loss is the mean of the per-position curve
    curve = torch.tensor([float(m[f"val_err/pos_{i}"]) for i in range(8)])
    assert float(m["val_loss"]) == pytest.approx(float(curve.mean()), rel=1e-4)


def test_regression_stacked_scores_the_query_only(tmp_path):
    module, dm = _regression(layout="stacked")
    trainer = _trainer(tmp_path)
    trainer.fit(module, dm)
    m = trainer.callback_metrics
    assert "val_err/pos_7" in m and "val_err_one_step_gd/pos_7" in m
    assert not any(k.endswith("pos_6") for k in m)
    assert float(m["val_loss"]) == pytest.approx(float(m["val_err/pos_7"]), rel=1e-4)


def test_regression_test_stage(tmp_path):
    module, dm = _regression()
    trainer = _trainer(tmp_path, limit_test_batches=1)
    (res,) = trainer.test(module, dm)
    assert "test_loss" in res and "test_err/pos_0" in res and "test_err_averaging/pos_3" in res


def test_regression_checks_token_width(tmp_path):
    module, _ = _regression(d=3)
    dm = RegressionDataModule(d=4, n_points=8)
    with pytest.raises(ValueError, match="d_in=4 does not match.*d \\+ 1 = 5"):
        _trainer(tmp_path).fit(module, dm)


def test_optimizer_groups_and_cosine(tmp_path):
    model = TokenModel(vocab_size=16, d_model=8, n_layers=1, mlp_ratio=0.0)
    module = MQARModule(model, lr=1e-2, weight_decay=0.1, warmup_steps=2, cosine=True, min_lr_ratio=0.1)
    dm = MQARDataModule(vocab_size=16, seq_len=16, num_kv_pairs=2, batch_size=4, val_size=4,
                        steps_per_epoch=5)
    trainer = _trainer(tmp_path, max_steps=10, limit_val_batches=0)
    trainer.fit(module, dm)
    opt = trainer.optimizers[0]
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 0.1]
    assert all(p.dim() < 2 for p in opt.param_groups[1]["params"])
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3, rel=1e-3)   # ended at min_lr_ratio · lr


@pytest.mark.parametrize("mixer", ["s6", "s4d", "rg_lru", "aaren", "mamba2"])
def test_weight_decay_spares_a_mixers_own_parameters(mixer):
    """Only linear layers' and embeddings' weights decay: S6's A [H, V, N], S4D's dt, A, B, C, RG-LRU's Λ
    and Aaren's query decayed under a rule by dims, which spared Mamba-2's 1-D A_log."""
    module = MQARModule(TokenModel(vocab_size=32, mixer=mixer, d_model=16, n_layers=1, mlp_ratio=0.0), cosine=False)
    decayed = {id(p) for p in module.configure_optimizers().param_groups[0]["params"]}
    matrices = {id(m.weight) for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
    assert decayed == matrices
    mixer_own = [n for n, p in module.named_parameters() if id(p) not in matrices and p.dim() >= 2]
    assert mixer != "mamba2" or not mixer_own   # (its own parameters are 1-D)
    assert mixer == "mamba2" or mixer_own, "the case should hold a mixer parameter of 2 or more dims"


def test_bad_optimiser_settings():
    model = TokenModel(vocab_size=16, d_model=8, n_layers=1)
    with pytest.raises(ValueError, match="lr must be > 0"):
        MQARModule(model, lr=0.0)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        MQARModule(model, min_lr_ratio=2.0)


def test_mqar_softmax_attention_learns(tmp_path):
    """Two attention layers solve a tiny MQAR far above chance (1/32) within 300 CPU steps (~20 s)."""
    L.seed_everything(0)
    model = TokenModel(vocab_size=64, mixer="softmax_attention", d_model=64, n_layers=2, mlp_ratio=0.0,
                       max_len=32)
    module = MQARModule(model, lr=3e-3, weight_decay=0.1, cosine=False)
    dm = MQARDataModule(vocab_size=64, seq_len=32, num_kv_pairs=4, batch_size=64, steps_per_epoch=300,
                        val_size=256, seed=0)
    trainer = _trainer(tmp_path, max_steps=300, limit_val_batches=None)
    trainer.validate(module, dm, verbose=False)
    before = float(trainer.callback_metrics["val_acc"])
    trainer.fit(module, dm)
    after = float(trainer.callback_metrics["val_acc"])
    assert before < 0.1 and after > 0.6, (before, after)


def test_regression_checks_max_len_against_the_prompts(tmp_path):
    """A prompt longer than the model's position table failed inside the first forward."""
    model = SequenceModel(d_in=4, mixer="linear_attention", d_model=8, n_layers=1, mlp_ratio=0.0, max_len=10)
    dm = RegressionDataModule(d=3, n_points=8)
    with pytest.raises(ValueError, match=r"model max_len=10 is shorter than the data's prompts: 16 tokens"):
        _trainer(tmp_path).fit(RegressionModule(model), dm)


class _Echo(torch.nn.Module):
    """A 'model' that outputs the y channel of each token: right at y-tokens, 0 at x-tokens."""

    def forward(self, tokens):
        return tokens[..., -1:]


def test_regression_predicts_at_the_x_tokens():
    """ŷ_i is read at x-token 2i, before y_i is seen; read at the y-token it would copy y_i (loss 0)."""
    module = RegressionModule(_Echo())
    dm = RegressionDataModule(d=3, n_points=5, batch_size=4, val_size=8, steps_per_epoch=1)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert torch.equal(module._sq_err(batch), batch["y"].square())
    stacked = RegressionDataModule(d=3, n_points=5, batch_size=4, val_size=8, steps_per_epoch=1, layout="stacked")
    stacked.setup("fit")
    batch = next(iter(stacked.val_dataloader()))
    assert torch.equal(module._sq_err(batch), batch["y"][:, -1:].square())   # the query's y is not in its token


class _Oracle(torch.nn.Module):
    """A token model that knows every label: one-hot logits of the answer at every position."""

    vocab_size = 64

    def __init__(self, labels):
        super().__init__()
        self.labels, self.dummy = labels, torch.nn.Parameter(torch.zeros(()))

    def forward(self, inputs):
        labels = self.labels.clamp(min=0)
        return torch.nn.functional.one_hot(labels, self.vocab_size).float() + 0 * self.dummy


def test_mqar_accuracy_counts_queries(tmp_path):
    """A model that answers every query scores val_acc 1 (correct queries over all queries)."""
    dm = MQARDataModule(vocab_size=64, seq_len=32, num_kv_pairs=4, batch_size=16, steps_per_epoch=1,
                        val_size=16, seed=0)
    dm.setup("validate")
    labels = next(iter(dm.val_dataloader()))["labels"]
    module = MQARModule(_Oracle(labels))
    trainer = _trainer(tmp_path, limit_val_batches=None)
    trainer.validate(module, dm, verbose=False)
    assert float(trainer.callback_metrics["val_acc"]) == 1.0


def test_position_metrics_sort_in_order():
    """Point names are zero-padded to the last point's digits, so a sort keeps the points' order."""
    from models.lit import position_metric

    for n in (1, 8, 11, 101):
        names = [position_metric("val_err", i, n) for i in range(n)]
        assert sorted(names) == names and names[-1] == f"val_err/pos_{n - 1}"
    assert position_metric("val_err", 3, 11) == "val_err/pos_03"
