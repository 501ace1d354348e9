"""MQAR accuracy against recurrent state size: does linear attention approach softmax as the state grows?

The question of the DSF paper's MQAR figure (Sieber et al. 2024; tasks from Zoology, Arora et al.
2024). Every mixer is the layer of the same 2-layer ``TokenModel`` without MLP
(``models/configs/mqar/state.yaml``), trained by ``MQARModule`` through a Lightning ``Trainer`` as
``dsf-train fit -c models/configs/mqar/state.yaml`` would; the sweep varies ``head_dim`` g (K = V = g
per head, and N = g states per channel for s6) at a fixed d_model. The state per layer is what
``dsf zoo`` counts, times the heads: H·K·V for the linear mixers, H·N·V for s6, H·V for qlstm.
Softmax attention has no fixed state: it is drawn at the size of its KV cache at the task's
sequence length, H·L·(K+V) (marked "KV cache" in the outputs).

    python -m models.experiments.mqar_state --out models/results/mqar_state            # CPU scale
    python -m models.experiments.mqar_state --accelerator gpu --scale gpu --out DIR     # H200
    python -m models.experiments.mqar_state --render DIR/mqar_state.csv --out DIR        # re-draw

Writes ``mqar_state.csv`` (one row per mixer and head_dim), ``mqar_state.png`` and ``mqar_state.md``.
``--render`` trains nothing: it re-draws ``mqar_state.png`` from a CSV the sweep wrote and prints the
table of ``mqar_state.md`` (without the wall time, which the CSV does not hold).
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import lightning as L

import dsf

from ..data import check_mqar
from ..layers import check_mixer
from .icl_sweep import (_check_int, _yaml_args, add_common_args, command_line, make_trainer, parse_mixers,
                        run_jobs)

__all__ = ["Settings", "settings", "state_size", "run", "write", "plot", "from_csv", "render", "main", "MIXERS",
           "CONFIG", "SCALES", "COLUMNS"]

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mqar" / "state.yaml"
MIXERS = ("softmax_attention", "linear_attention", "normalized_attention", "s6", "mamba2", "qlstm",
          "deltanet", "gated_deltanet")
# --scale gpu on top of the YAML: the same task, a wider range of head sizes, more steps and bigger
# batches, several processes on the one GPU; the deadline keeps the run under 6 GPU minutes. Larger
# tasks were not learned by the linear mixers within the steps those minutes allow (CPU calibration):
# at V=L=64 with 8 pairs (d_model 128, batch 128, 1500 steps, head_dim 32) linear attention (elu+1,
# normalised) reached 0.15 where DeltaNet reached 1.0 (softmax attention 1.0 after 1000 steps); with
# 4 pairs (d_model 64, batch 64, 2000 steps, head_dim 16) linear attention 0.27, Mamba-2 0.25.
SCALES: dict[str, dict[str, Any]] = {
    "cpu": dict(head_dims=(4, 8, 16)),   # s6 at 32 (N = V = 32) took 9-20 s a step on the CPU reference form
    "gpu": dict(head_dims=(4, 8, 16, 32), steps=1500, batch=128, workers=6, deadline=300.0),
}
COLUMNS = ["mixer", "family", "head_dim", "d_model", "state_size", "state_kind", "val_acc", "val_loss",
           "train_loss", "params", "steps", "train_seconds", "status"]
SLOW = {"s6": 4}   # reference path of its per-(channel, state) decay on the CPU
# Linear attention as Katharopoulos et al. write it (φ = elu + 1, with the normaliser). With the zoo's
# default (identity map, no normaliser) it stayed at val_acc 0.28 after 1200 CPU steps at head_dim 16,
# where this variant reached 1.0 (0.43 after 800, 0.26 after 400).
MIXER_OPTIONS: dict[str, dict[str, Any]] = {"linear_attention": {"feature_map": "elu1", "normalize": True}}


def state_size(mixer: str, head_dim: int, n_heads: int = 1, seq_len: int | None = None,
               options: dict | None = None) -> tuple[int, str]:
    """(numbers in one layer's state, what they are) for K = V = N = E = head_dim.

    A finite-state mixer gives ``n_heads × spec.state_numel`` ("recurrent"), plus the normaliser's K
    per head for linear attention with ``normalize=True``; softmax attention gives its KV cache after
    ``seq_len`` tokens, ``n_heads · seq_len · 2·head_dim`` ("KV cache").
    """
    options = dict(options or {})
    spec = dsf.zoo.get(check_mixer(mixer), **options)
    dims = {"K": head_dim, "V": head_dim, "N": head_dim, "E": head_dim, "F": head_dim}
    numel = spec.state_numel(dims) if spec.state_numel else math.nan
    if mixer == "linear_attention" and options.get("normalize"):
        numel += head_dim             # z = Σ φ(k): one more value column (dsf zoo: "+K'")
    if math.isinf(numel):
        if seq_len is None:
            raise ValueError(f"{mixer} keeps a KV cache: give seq_len to size it")
        return n_heads * seq_len * 2 * head_dim, "KV cache"
    return int(n_heads * numel), "recurrent"


@dataclass(frozen=True)
class Settings:
    """One sweep: mixers × head_dims, and everything the runs share. ``settings()`` fills it."""

    mixers: tuple[str, ...]
    head_dims: tuple[int, ...]
    steps: int
    vocab_size: int
    seq_len: int
    num_kv_pairs: int
    batch: int
    val_size: int
    seed: int
    task: dict = field(default_factory=dict)      # MQARModule: lr, weight_decay, cosine, warmup_steps
    model: dict = field(default_factory=dict)     # TokenModel minus vocab_size / mixer / head_dim / state_dim
    mixer_options: dict = field(default_factory=lambda: dict(MIXER_OPTIONS))   # per mixer
    accelerator: str = "cpu"
    precision: str = "32-true"
    backend: str = "auto"
    workers: int = 1
    threads: int = 1
    deadline: float | None = None
    scale: str = "cpu"

    def check(self) -> None:
        if not self.mixers:
            raise ValueError("mixers must name at least one zoo mixer")
        for m in self.mixers:
            check_mixer(m)
        if not self.head_dims:
            raise ValueError("head_dims must hold at least one size")
        for g in self.head_dims:
            _check_int("head_dims entries", g)
        for name in ("steps", "batch", "val_size", "workers", "threads"):
            _check_int(name, getattr(self, name))
        check_mqar(self.vocab_size, self.seq_len, self.num_kv_pairs)
        if self.deadline is not None and not self.deadline > 0:
            raise ValueError(f"deadline must be > 0 seconds, got {self.deadline!r}")


def settings(*, config: Path = CONFIG, scale: str = "cpu", mixers: list[str] | tuple[str, ...] | None = None,
             **overrides: Any) -> Settings:
    """Settings from the YAML, then the ``scale`` preset, then ``overrides`` (None means keep).

    Besides the fields of ``Settings``: ``d_model``, ``n_layers``, ``n_heads`` (model), ``lr`` and
    ``warmup_steps`` (default: the YAML's fraction of the steps).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {tuple(SCALES)}, got {scale!r}")
    trainer, task, model, data = _yaml_args(config)
    for key in ("vocab_size", "mixer", "head_dim", "state_dim", "mixer_options"):   # set per run
        model.pop(key, None)
    ov = {**SCALES[scale], **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("d_model", "n_layers", "n_heads"):
        if key in ov:
            model[key] = ov.pop(key)
    if "lr" in ov:
        task["lr"] = ov.pop("lr")
    steps = ov.pop("steps", trainer["max_steps"])
    frac = task.get("warmup_steps", 0) / trainer["max_steps"]
    task["warmup_steps"] = ov.pop("warmup_steps", round(frac * steps))
    kv = data["num_kv_pairs"]
    s = Settings(mixers=MIXERS if mixers is None else tuple(mixers), head_dims=tuple(ov.pop("head_dims")),
                 steps=steps, vocab_size=data["vocab_size"], seq_len=data["seq_len"],
                 num_kv_pairs=kv if isinstance(kv, int) else int(kv[0]), batch=data["batch_size"],
                 val_size=data["val_size"], seed=trainer["seed"], task=task, model=model, scale=scale)
    s = replace(s, **{k: ov.pop(k) for k in list(ov) if k in asdict(s)})
    if ov:
        raise ValueError(f"unknown settings: {sorted(ov)}")
    s = replace(s, head_dims=tuple(s.head_dims), mixers=tuple(s.mixers))
    s.check()
    return s


def datamodule(s: Settings):
    from ..data import MQARDataModule

    return MQARDataModule(vocab_size=s.vocab_size, seq_len=s.seq_len, num_kv_pairs=s.num_kv_pairs,
                          batch_size=s.batch, steps_per_epoch=s.steps, val_size=s.val_size, test_size=1,
                          seed=s.seed)


def fit_one(job: tuple[str, int, Settings], deadline_at: float | None = None) -> dict:
    """Train one (mixer, head_dim); return its validation accuracy and loss."""
    from ..lit import MQARModule
    from ..model import TokenModel

    mixer, g, s = job
    L.seed_everything(s.seed, verbose=False)
    kw = {**s.model, "max_len": s.seq_len if s.model.get("max_len") else 0}
    opts = s.mixer_options.get(mixer)
    model = TokenModel(vocab_size=s.vocab_size, mixer=mixer, head_dim=g, state_dim=g, backend=s.backend,
                       mixer_options=opts, **kw)
    module = MQARModule(model, **s.task)
    trainer = make_trainer(s.steps, s.accelerator, s.precision, deadline_at)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule(s))
    size, kind = state_size(mixer, g, model.blocks[0].mixer.n_heads, s.seq_len, opts)
    res = {"job": job, "mixer": mixer, "head_dim": g, "params": sum(p.numel() for p in model.parameters()),
           "train_seconds": time.perf_counter() - t0, "steps": trainer.global_step, "state_size": size,
           "state_kind": kind}
    if trainer.global_step < s.steps:
        return {**res, "status": f"stopped at step {trainer.global_step} (deadline)"}
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    res.update(val_acc=m["val_acc"], val_loss=m["val_loss"], train_loss=m.get("train_loss", math.nan))
    res["status"] = "ok" if math.isfinite(res["val_loss"]) else "diverged (non-finite loss)"
    return res


def run(s: Settings, out: str | Path | None = None, log: Callable[[str], None] | None = print) -> dict:
    """Train every (mixer, head_dim) of ``s``; write the CSV, plot and table into ``out`` as they finish."""
    s.check()
    out = None if out is None else Path(out)
    sweep = {"settings": s, "runs": {}}
    t0 = time.perf_counter()

    def collect(res: dict) -> None:
        mixer, g, _ = res["job"]
        sweep["runs"][(mixer, g)] = res
        if log:
            acc = f"val_acc {res['val_acc']:.3f}, " if "val_acc" in res else ""
            secs = f"{res['train_seconds']:.0f} s, " if "train_seconds" in res else ""
            log(f"[{time.perf_counter() - t0:6.0f} s] {mixer:21s} head_dim {g:4d}: {acc}{secs}{res['status']}")
        if out is not None:
            write(sweep, out)

    jobs = [(m, g, s) for m in s.mixers for g in s.head_dims]
    run_jobs(jobs, fit_one, workers=s.workers, deadline=s.deadline,
             cost=lambda j: SLOW.get(j[0], 1) * (1 + j[1] / 64), on_result=collect, threads=s.threads)
    sweep["runs"] = {(m, g): sweep["runs"][(m, g)] for m, g, _ in jobs}
    sweep["seconds"] = time.perf_counter() - t0
    if out is not None:
        write(sweep, out)
    return sweep


# -- outputs ------------------------------------------------------------------------------------------
def rows(sweep: dict) -> list[dict]:
    s: Settings = sweep["settings"]
    out = []
    for (mixer, g), r in sweep["runs"].items():
        size, kind = r.get("state_size"), r.get("state_kind")
        if size is None:
            size, kind = state_size(mixer, g, s.model.get("n_heads", 1), s.seq_len, s.mixer_options.get(mixer))
        f = lambda k: f"{r[k]:.6g}" if k in r else ""   # noqa: E731
        out.append(dict(mixer=mixer, family=dsf.zoo.get(mixer).family, head_dim=g, d_model=s.model.get("d_model"),
                        state_size=size, state_kind=kind, val_acc=f("val_acc"), val_loss=f("val_loss"),
                        train_loss=f("train_loss"), params=r.get("params", ""), steps=r.get("steps", ""),
                        train_seconds=f("train_seconds"), status=r["status"]))
    return out


def markdown(sweep: dict) -> str:
    s: Settings = sweep["settings"]
    H = s.model.get("n_heads", 1)
    lines = [f"# MQAR accuracy against state size, {len(s.mixers)} mixers", "",
             f"Exact-match accuracy on the {s.val_size} fixed validation sequences (V = {s.vocab_size}, "
             f"L = {s.seq_len}, {s.num_kv_pairs} kv pairs, Zoology's generator). Same model for every run: "
             f"{s.model.get('n_layers')} layers, d_model {s.model.get('d_model')}, {H} head(s), no MLP, "
             f"{'learned positions' if s.model.get('max_len') else 'no positions'}; head_dim g sets K = V = g "
             f"(and N = g for s6). {s.steps} AdamW steps of {s.batch} sequences, lr {s.task.get('lr')}, "
             f"weight decay {s.task.get('weight_decay')}, {s.task.get('warmup_steps')} warmup steps, cosine to 0, "
             f"seed {s.seed}; one learning rate for all (Zoology and the DSF paper take the best of four); "
             f"{s.accelerator}, precision {s.precision}, backend {s.backend!r}.", "",
             f"Command: `{_command(s)}`", "",
             "Cells: val_acc (state numbers per layer). Softmax attention's number is its KV cache at "
             f"L = {s.seq_len}, H·L·(K+V), not a fixed state."
             + "".join(f" `{m}` runs with {o}." for m, o in s.mixer_options.items() if m in s.mixers), "",
             "| mixer | family | " + " | ".join(f"g={g}" for g in s.head_dims) + " |",
             "|---|---|" + "---|" * len(s.head_dims)]
    for mixer in s.mixers:
        cells = []
        for g in s.head_dims:
            r = sweep["runs"].get((mixer, g))
            if r is None:
                cells.append("")
            elif "val_acc" in r:
                cells.append(f"{r['val_acc']:.3f} ({r['state_size']:,})" + ("" if r["status"] == "ok" else " †"))
            else:
                cells.append(f"— ({r['status']})")
        lines.append(f"| `{mixer}` | {dsf.zoo.get(mixer).family} | " + " | ".join(cells) + " |")
    if "seconds" in sweep:
        lines += ["", f"Wall time of the sweep: {sweep['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def _command(s: Settings) -> str:
    flags = [("--head-dims", "head_dims"), ("--steps", "steps"), ("--vocab-size", "vocab_size"),
             ("--seq-len", "seq_len"), ("--num-kv-pairs", "num_kv_pairs"), ("--batch", "batch"),
             ("--val-size", "val_size")]
    return command_line("python -m models.experiments.mqar_state", s, settings(scale=s.scale), flags)


def plot(sweep: dict):
    """Accuracy against state size (log scale; softmax at its KV cache, hollow) and against head_dim."""
    from matplotlib.figure import Figure

    s: Settings = sweep["settings"]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax, bx = fig.subplots(1, 2, width_ratios=[1.4, 1])
    for k, mixer in enumerate(s.mixers):
        pts = [(r["state_size"], g, r["val_acc"], r["state_kind"]) for (m, g), r in sweep["runs"].items()
               if m == mixer and "val_acc" in r]
        if not pts:
            continue
        sizes, gs, accs, kinds = zip(*pts)
        cache = kinds[0] == "KV cache"
        style = dict(color=f"C{k}", marker="o", ms=5, lw=1.4)
        if cache:
            style.update(ls="--", mfc="white")
        extra = " (elu+1, normalised)" if s.mixer_options.get(mixer, {}).get("feature_map") == "elu1" else ""
        ax.plot(sizes, accs, label=mixer + extra + (" (KV cache at L)" if cache else ""), **style)
        bx.plot(gs, accs, label=mixer, **style)
    ax.set(xscale="log", xlabel="state numbers per layer (softmax: KV cache after L tokens)",
           ylabel="MQAR accuracy", ylim=(-0.02, 1.02),
           title=f"V={s.vocab_size}, L={s.seq_len}, {s.num_kv_pairs} kv pairs, d_model {s.model.get('d_model')}")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7, loc="upper left")
    bx.set(xscale="log", xlabel="head_dim g (K = V = g; N = g for s6)", ylim=(-0.02, 1.02),
           title=f"{s.steps} steps × {s.batch} sequences ({s.scale} scale)")
    bx.set_xscale("log", base=2)
    bx.set_xticks(list(s.head_dims), [str(g) for g in s.head_dims])
    for a in (ax, bx):
        a.grid(alpha=0.3)
    return fig


def write(sweep: dict, out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "mqar_state.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows(sweep))
    (out / "mqar_state.md").write_text(markdown(sweep))
    if any("val_acc" in r for r in sweep["runs"].values()):
        plot(sweep).savefig(out / "mqar_state.png", dpi=110)


def from_csv(path: str | Path, s: Settings) -> dict:
    """The sweep a ``mqar_state.csv`` holds; ``s`` supplies what the CSV does not record (task, batch, …).

    The CSV's mixers and head_dims replace those of ``s``; its d_model, steps (of the runs that
    finished) and state sizes must be the ones ``s`` gives, else a ValueError says which differ.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"render: no such file {str(path)!r}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        table = list(reader)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing or not table:
        raise ValueError(f"render: {path} is not a mqar_state CSV "
                         + (f"(missing columns {missing})" if missing else "(no rows)"))
    known = [m for m in MIXERS if any(r["mixer"] == m for r in table)]
    mixers = known + [m for m in dict.fromkeys(r["mixer"] for r in table) if m not in known]
    s = replace(s, mixers=tuple(mixers), head_dims=tuple(sorted({int(r["head_dim"]) for r in table})))
    s.check()
    d_models = {int(r["d_model"]) for r in table}
    steps = {int(r["steps"]) for r in table if r["status"] == "ok"}
    if d_models != {s.model.get("d_model")} or not steps <= {s.steps}:
        raise ValueError(f"render: {path} was written with d_model {sorted(d_models)}, steps {sorted(steps)}; "
                         f"these settings give d_model {s.model.get('d_model')}, steps {s.steps} "
                         "(pass the run's --scale, --d-model, --steps)")
    runs = {}
    for r in sorted(table, key=lambda r: (mixers.index(r["mixer"]), int(r["head_dim"]))):
        m, g = r["mixer"], int(r["head_dim"])
        size, kind = state_size(m, g, s.model.get("n_heads", 1), s.seq_len, s.mixer_options.get(m))
        if (int(r["state_size"]), r["state_kind"]) != (size, kind):
            raise ValueError(f"render: {path} gives {m} at head_dim {g} a state of {r['state_size']} "
                             f"({r['state_kind']}); these settings give {size} ({kind}) (other seq_len or "
                             "mixer options?)")
        res = {"job": (m, g, s), "mixer": m, "head_dim": g, "state_size": size, "state_kind": kind,
               "status": r["status"]}
        for key, cast in (("params", int), ("steps", int), ("train_seconds", float), ("val_acc", float),
                          ("val_loss", float), ("train_loss", float)):
            if r[key] != "":
                res[key] = cast(r[key])
        runs[(m, g)] = res
    return {"settings": s, "runs": runs}


def render(path: str | Path, s: Settings, out: str | Path) -> dict:
    """Re-draw ``out/mqar_state.png`` from the CSV at ``path`` (see ``from_csv``); return the sweep."""
    sweep = from_csv(path, s)
    if not any("val_acc" in r for r in sweep["runs"].values()):
        raise ValueError(f"render: {path} holds no finished run to draw")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot(sweep).savefig(out / "mqar_state.png", dpi=110)
    return sweep


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def _settings_of(a: argparse.Namespace) -> Settings:
    return settings(scale=a.scale or "cpu", mixers=parse_mixers(a.mixers), head_dims=a.head_dims, steps=a.steps,
                    vocab_size=a.vocab_size, seq_len=a.seq_len, num_kv_pairs=a.num_kv_pairs, batch=a.batch,
                    val_size=a.val_size, accelerator=a.accelerator, precision=a.precision, backend=a.backend,
                    workers=a.workers, threads=a.threads, deadline=a.deadline, seed=a.seed, lr=a.lr,
                    d_model=a.d_model)


def parser() -> argparse.ArgumentParser:
    """The command line of ``main``."""
    p = argparse.ArgumentParser(prog="python -m models.experiments.mqar_state",
                                description=__doc__.split("\n")[0])
    add_common_args(p, "results/mqar_state", mixers_help=f"comma-separated zoo names (default: {', '.join(MIXERS)})")
    p.add_argument("--head-dims", type=_int_list, default=None, help="K = V per head, e.g. 8,16,32")
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--num-kv-pairs", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--val-size", type=int, default=None, help="validation sequences")
    p.add_argument("--render", type=Path, default=None, metavar="CSV",
                   help="train nothing: re-draw the figure from this CSV into --out and print the table "
                        "(the scale is the one whose steps and d_model the CSV has, unless --scale is given)")
    p.set_defaults(scale=None)   # --render picks the scale from the CSV when none is given
    return p


def main(argv: list[str] | None = None) -> dict:
    p = parser()
    a = p.parse_args(argv)
    if a.render is not None:
        return _main_render(p, a)
    try:
        s = _settings_of(a)
    except ValueError as err:
        p.error(str(err))
    print(f"mqar_state: {len(s.mixers)} mixers × head_dims {list(s.head_dims)}, {s.steps} steps, batch {s.batch}, "
          f"V={s.vocab_size}, L={s.seq_len}, kv={s.num_kv_pairs}, {s.workers} worker(s) on {s.accelerator}; "
          f"writing {a.out}", flush=True)
    sweep = run(s, a.out)
    bad = [f"{m}@{g}" for (m, g), r in sweep["runs"].items() if r["status"] != "ok"]
    print(f"done in {sweep['seconds']:.0f} s; wrote {a.out}/mqar_state.{{csv,png,md}}"
          + (f"; not ok: {', '.join(bad)}" if bad else ""))
    return sweep


def _main_render(p: argparse.ArgumentParser, a: argparse.Namespace) -> dict:
    error = ""
    for scale in [a.scale] if a.scale else list(SCALES):
        try:
            s = settings(scale=scale, steps=a.steps, vocab_size=a.vocab_size, seq_len=a.seq_len,
                         num_kv_pairs=a.num_kv_pairs, batch=a.batch, val_size=a.val_size, accelerator=a.accelerator,
                         precision=a.precision, backend=a.backend, seed=a.seed, lr=a.lr, d_model=a.d_model)
            sweep = render(a.render, s, a.out)
            break
        except ValueError as err:
            error = str(err)
    else:
        p.error(error)
    print(markdown(sweep), end="")
    print(f"\nrendered {a.out}/mqar_state.png from {a.render} ({sweep['settings'].scale} scale)")
    return sweep


if __name__ == "__main__":
    from models.experiments.mqar_state import main as _main   # see icl_sweep

    _main()
