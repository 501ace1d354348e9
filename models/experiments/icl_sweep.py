"""Error against the number of in-context examples, for every zoo mixer at one training budget.

Each mixer is the layer of the same small ``SequenceModel`` (``models/configs/icl/sweep.yaml``: d_model,
layers, heads, steps, lr schedule, batch and seed are shared), trained by ``RegressionModule`` through
a Lightning ``Trainer`` exactly as ``dsf-train fit -c models/configs/icl/sweep.yaml
--model.model.mixer <name>`` would, on Garg et al.'s interleaved in-context linear regression. All
mixers see the same training prompts and are scored on the same fixed validation prompts, position by
position, beside least squares, ridge, one GD step at η* (and averaging, 3-NN) on those prompts and
the closed forms of ``models.icl``.

    python -m models.experiments.icl_sweep --out models/results/icl_sweep            # CPU scale
    python -m models.experiments.icl_sweep --accelerator gpu --scale gpu --out DIR     # H200

Writes ``icl_sweep.csv`` (long format: one row per method and position), ``icl_sweep.png`` and
``icl_sweep.md`` into ``--out``, rewritten after every finished mixer. ``run_jobs`` and
``make_trainer`` are shared with ``models.experiments.mqar_state``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import multiprocessing as mp
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
import yaml

import dsf

from .. import icl
from ..layers import check_mixer

__all__ = ["Settings", "settings", "run", "run_jobs", "make_trainer", "write", "plot", "main",
           "CONFIG", "SCALES", "BASELINES", "COLUMNS"]

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "icl" / "sweep.yaml"
# What --scale gpu changes on top of the YAML (the CPU scale): more steps, bigger batches, a wider
# model, and several processes on the one GPU (at these sizes a step is bound by kernel launches,
# which processes issue side by side). The deadline keeps the run under the lead's 6 GPU minutes.
SCALES: dict[str, dict[str, Any]] = {
    "cpu": {},
    "gpu": dict(steps=800, batch=256, d_model=64, workers=6, deadline=300.0),
}
BASELINES = ("least_squares", "ridge", "one_step_gd", "averaging", "knn3")   # RegressionModule logs these
PLOTTED = ("least_squares", "ridge", "one_step_gd")
COLUMNS = ["kind", "method", "family", "position", "sq_err", "sq_err_over_d", "params", "steps",
           "train_seconds", "status"]
# Rough relative cost of one step (CPU, T = 22): the loop-over-time memories first, so that with
# several workers the longest jobs start first.
SLOW = {"titans": 8, "moneta": 12, "yaad": 9, "memora": 10, "ttt_mlp": 8, "s4d": 4, "s6": 4}


# -- shared machinery ---------------------------------------------------------------------------------
def _quiet() -> None:
    """Lightning's per-run banners and its "few workers" hints would repeat for every mixer."""
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=PossibleUserWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")   # lightning's pytree shim


class _Deadline(L.Callback):
    """Stops training once the wall clock passes ``at`` (a time.time() value; None: never)."""

    def __init__(self, at: float | None):
        self.at = at

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.at is not None and time.time() > self.at:
            trainer.should_stop = True


def make_trainer(steps: int, accelerator: str, precision: str, deadline_at: float | None = None):
    """A quiet Trainer for one run of ``steps`` optimiser steps: no logger, no checkpoints, no
    sanity check; validation runs once, at the end of the single epoch of ``steps`` batches."""
    _quiet()
    return L.Trainer(max_steps=steps, accelerator=accelerator, devices=1, precision=precision,
                     logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0,
                     log_every_n_steps=max(1, steps), callbacks=[_Deadline(deadline_at)])


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    _quiet()


def _call(fit: Callable, job: Any, deadline_at: float | None) -> dict:
    try:
        return fit(job, deadline_at)
    except Exception as err:  # one broken mixer must not lose the others' results
        return {"job": job, "status": f"error: {type(err).__name__}: {err}"}


def run_jobs(jobs: list, fit: Callable[[Any, float | None], dict], *, workers: int = 1,
             deadline: float | None = None, cost: Callable[[Any], float] = lambda j: 1.0,
             on_result: Callable[[dict], None] | None = None, threads: int = 1) -> list[dict]:
    """Run ``fit(job, deadline_at)`` for every job, in this process or in ``workers`` spawned ones.

    Jobs start most expensive first (``cost``). Every result dict carries ``job`` and ``status``
    ("ok", "error: ...", "stopped at step k (deadline)", "not started (deadline)"); ``on_result``
    sees each one as it arrives. ``deadline`` (seconds from now) stops runs in progress at their
    next step and starts no new ones; results come back in the order of ``jobs``.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    at = None if deadline is None else time.time() + deadline
    order = sorted(range(len(jobs)), key=lambda i: -cost(jobs[i]))
    results: dict[int, dict] = {}

    def done(i: int, res: dict) -> None:
        results[i] = res
        if on_result is not None:
            on_result(res)

    if workers == 1:
        threads_before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for i in order:
                late = at is not None and time.time() > at
                done(i, {"job": jobs[i], "status": "not started (deadline)"} if late else _call(fit, jobs[i], at))
        finally:
            torch.set_num_threads(threads_before)
    else:
        ctx = mp.get_context("spawn")   # CUDA cannot be re-initialised in a forked child
        with ctx.Pool(workers, initializer=_init_worker, initargs=(threads,)) as pool:
            pending = {i: pool.apply_async(_call, (fit, jobs[i], at)) for i in order}
            while pending:
                for i in [i for i, r in pending.items() if r.ready()]:
                    done(i, pending.pop(i).get())
                if at is not None and time.time() > at + 30:   # a run stuck in one long step
                    pool.terminate()
                    for i in pending:
                        done(i, {"job": jobs[i], "status": "killed (deadline)"})
                    pending = {}
                time.sleep(0.2)
    return [results[i] for i in range(len(jobs))]


def _check_int(name: str, value: Any, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _yaml_args(path: Path) -> tuple[dict, dict, dict, dict]:
    """(trainer, task, model, data) init arguments of a dsf-train config, plus its seed in trainer."""
    cfg = yaml.safe_load(Path(path).read_text())
    task = dict(cfg["model"]["init_args"])
    model = dict(task.pop("model")["init_args"])
    trainer = dict(cfg.get("trainer", {}), seed=cfg.get("seed_everything", 0))
    return trainer, task, model, dict(cfg["data"]["init_args"])


# -- this experiment ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """One sweep: the mixers and everything they share. ``settings()`` fills it from the YAML."""

    mixers: tuple[str, ...]
    steps: int
    d: int
    n_points: int
    noise_std: float
    batch: int
    val_size: int
    seed: int
    task: dict = field(default_factory=dict)      # RegressionModule: lr, warmup_steps, cosine, ...
    model: dict = field(default_factory=dict)     # SequenceModel, minus d_in / mixer / max_len
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
        for name in ("steps", "d", "n_points", "batch", "val_size", "workers", "threads"):
            _check_int(name, getattr(self, name))
        if not (self.noise_std >= 0 and math.isfinite(self.noise_std)):
            raise ValueError(f"noise_std must be finite and >= 0, got {self.noise_std!r}")
        if self.deadline is not None and not self.deadline > 0:
            raise ValueError(f"deadline must be > 0 seconds, got {self.deadline!r}")


def settings(*, config: Path = CONFIG, scale: str = "cpu", mixers: list[str] | tuple[str, ...] | None = None,
             **overrides: Any) -> Settings:
    """Settings from the YAML, then the ``scale`` preset, then ``overrides`` (None means keep).

    ``overrides`` takes the fields of ``Settings`` and, for the model, ``d_model``, ``n_layers``,
    ``n_heads``; ``lr`` and ``warmup_steps`` (default 10% of steps) for the task.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {tuple(SCALES)}, got {scale!r}")
    trainer, task, model, data = _yaml_args(config)
    for key in ("d_in", "mixer"):   # set per run
        model.pop(key, None)
    ov = {**SCALES[scale], **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("d_model", "n_layers", "n_heads"):
        if key in ov:
            model[key] = ov.pop(key)
    if "lr" in ov:
        task["lr"] = ov.pop("lr")
    steps = ov.pop("steps", trainer["max_steps"])
    # the YAML's warmup is 10% of its steps; keep that fraction when the steps change
    task["warmup_steps"] = ov.pop("warmup_steps", round(0.1 * steps) if task.get("warmup_steps") else 0)
    names = tuple(dsf.zoo.names()) if mixers is None else tuple(mixers)
    s = Settings(mixers=names, steps=steps, d=data["d"], n_points=data["n_points"],
                 noise_std=float(data.get("noise_std", 0.0)), batch=data["batch_size"],
                 val_size=data["val_size"], seed=trainer["seed"], task=task, model=model, scale=scale)
    s = replace(s, **{k: ov[k] for k in ("d", "n_points", "noise_std", "batch", "val_size", "seed",
                                        "accelerator", "precision", "backend", "workers", "threads",
                                        "deadline") if k in ov})
    unknown = set(ov) - set(asdict(s))
    if unknown:
        raise ValueError(f"unknown settings: {sorted(unknown)}")
    s.check()
    return s


def datamodule(s: Settings):
    from ..data import RegressionDataModule

    return RegressionDataModule(d=s.d, n_points=s.n_points, noise_std=s.noise_std, batch_size=s.batch,
                                val_size=s.val_size, test_size=1, seed=s.seed, steps_per_epoch=s.steps)


def fit_mixer(job: tuple[str, Settings], deadline_at: float | None = None) -> dict:
    """Train one mixer with the shared settings; return its validation curve and the baselines'."""
    from ..lit import RegressionModule, position_metric
    from ..model import SequenceModel

    mixer, s = job
    L.seed_everything(s.seed, verbose=False)     # the same initial stream for every mixer
    # positions, if the YAML asks for them, cover the prompt
    kw = {**s.model, "max_len": 2 * s.n_points if s.model.get("max_len") else 0}
    model = SequenceModel(d_in=s.d + 1, mixer=mixer, backend=s.backend, **kw)
    module = RegressionModule(model, **s.task)
    trainer = make_trainer(s.steps, s.accelerator, s.precision, deadline_at)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule(s))
    seconds = time.perf_counter() - t0
    res = {"job": job, "mixer": mixer, "params": sum(p.numel() for p in model.parameters()),
           "train_seconds": seconds, "steps": trainer.global_step}
    if trainer.global_step < s.steps:
        return {**res, "status": f"stopped at step {trainer.global_step} (deadline)"}
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    curve = [m[position_metric("val_err", i, s.n_points)] for i in range(s.n_points)]
    res["curve"] = curve
    res["baselines"] = {b: [m[position_metric(f"val_err_{b}", i, s.n_points)] for i in range(s.n_points)]
                        for b in BASELINES}
    res["train_loss"] = m.get("train_loss", math.nan)
    res["status"] = "ok" if all(math.isfinite(e) for e in curve) else "diverged (non-finite error)"
    return res


def closed_forms(s: Settings) -> dict[str, list[float]]:
    """Risk at position i (i earlier examples) of min-norm least squares and of one GD step at η*."""
    nv = s.noise_std ** 2
    return {"least_squares_risk": [icl.least_squares_risk(s.d, i, nv) for i in range(s.n_points)],
            "gd_optimal_risk": [icl.gd_optimal_risk(s.d, i, nv) for i in range(s.n_points)]}


def run(s: Settings, out: str | Path | None = None, log: Callable[[str], None] | None = print) -> dict:
    """Train every mixer of ``s``; write the CSV, plot and table into ``out`` after each one."""
    s.check()
    out = None if out is None else Path(out)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    sweep = {"settings": s, "runs": {}, "baselines": None, "closed_forms": closed_forms(s)}
    t0 = time.perf_counter()

    def collect(res: dict) -> None:
        mixer = res["job"][0]
        sweep["runs"][mixer] = res
        if res.get("baselines") and sweep["baselines"] is None:
            sweep["baselines"] = res["baselines"]
        if log:
            last = f"err/d at i={s.n_points - 1}: {res['curve'][-1] / s.d:.4f}, " if "curve" in res else ""
            secs = f"{res['train_seconds']:.0f} s, " if "train_seconds" in res else ""
            log(f"[{time.perf_counter() - t0:6.0f} s] {mixer:21s} {last}{secs}{res['status']}")
        if out is not None:
            write(sweep, out)

    run_jobs([(m, s) for m in s.mixers], fit_mixer, workers=s.workers, deadline=s.deadline,
             cost=lambda job: SLOW.get(job[0], 1), on_result=collect, threads=s.threads)
    sweep["runs"] = {m: sweep["runs"][m] for m in s.mixers}
    sweep["seconds"] = time.perf_counter() - t0
    if out is not None:
        write(sweep, out)
    return sweep


# -- outputs ------------------------------------------------------------------------------------------
def rows(sweep: dict) -> list[dict]:
    """The CSV rows: every mixer's curve, the baselines (same prompts) and the closed forms."""
    s: Settings = sweep["settings"]
    out = []

    def add(kind, method, family, curve, **meta):
        for i, e in enumerate(curve):
            out.append(dict(kind=kind, method=method, family=family, position=i, sq_err=f"{e:.6g}",
                            sq_err_over_d=f"{e / s.d:.6g}", params=meta.get("params", ""),
                            steps=meta.get("steps", ""), train_seconds=meta.get("train_seconds", ""),
                            status=meta.get("status", "")))
    for mixer, r in sweep["runs"].items():
        if "curve" in r:
            add("mixer", mixer, dsf.zoo.get(mixer).family, r["curve"], params=r["params"], steps=r["steps"],
                train_seconds=f"{r['train_seconds']:.1f}", status=r["status"])
    for name, curve in (sweep["baselines"] or {}).items():
        add("baseline", name, "", curve)
    for name, curve in sweep["closed_forms"].items():
        add("closed_form", name, "", curve)
    return out


def _table_positions(s: Settings) -> list[int]:
    return sorted({i for i in (0, 1, s.d - 1, s.d, 2 * s.d, s.n_points - 1) if 0 <= i < s.n_points})


def markdown(sweep: dict) -> str:
    s: Settings = sweep["settings"]
    pos = _table_positions(s)
    lines = [f"# In-context regression: error vs examples, {len(s.mixers)} zoo mixers", "",
             f"Squared error / d on {s.val_size} fixed validation prompts (d = {s.d}, {s.n_points} points, "
             f"noise σ = {s.noise_std:g}, w ~ N(0, I); predicting 0 scores 1). Same model for every mixer: "
             f"{_model_line(s)}; {s.steps} AdamW steps of {s.batch} prompts, lr {s.task.get('lr')}, "
             f"{s.task.get('warmup_steps', 0)} warmup steps, cosine to {s.task.get('min_lr_ratio', 0)}·lr, "
             f"seed {s.seed}; {s.accelerator}, precision {s.precision}, backend {s.backend!r}.", "",
             f"Command: `{_command(s)}`", "",
             "| mixer | family | params | " + " | ".join(f"i={i}" for i in pos) + " | mean | train s | status |",
             "|---|---|---|" + "---|" * len(pos) + "---|---|---|"]
    for mixer, r in sweep["runs"].items():
        fam = dsf.zoo.get(mixer).family
        if "curve" in r:
            c = r["curve"]
            vals = " | ".join(f"{c[i] / s.d:.3f}" for i in pos)
            lines.append(f"| `{mixer}` | {fam} | {r['params']} | {vals} | {sum(c) / len(c) / s.d:.3f} | "
                         f"{r['train_seconds']:.0f} | {r['status']} |")
        else:
            lines.append(f"| `{mixer}` | {fam} | {r.get('params', '')} | " + " | ".join("—" for _ in pos)
                         + f" | — | {r.get('train_seconds', 0):.0f} | {r['status']} |")
    refs = [(f"baseline: {b}", c) for b, c in (sweep["baselines"] or {}).items()]
    refs += [(f"closed form: {b}", c) for b, c in sweep["closed_forms"].items()]
    for name, c in refs:
        lines.append(f"| {name} | | | " + " | ".join(f"{c[i] / s.d:.3f}" for i in pos)
                     + f" | {sum(c) / len(c) / s.d:.3f} | | |")
    if "seconds" in sweep:
        lines += ["", f"Wall time of the sweep: {sweep['seconds']:.0f} s."]
    lines += ["", "Baselines are computed on the same validation prompts; with σ = 0 Bayes ridge (λ = σ²/τ²) "
              "is least squares. Closed forms: `models.icl.least_squares_risk`, `gd_optimal_risk`."]
    return "\n".join(lines) + "\n"


def _model_line(s: Settings) -> str:
    m = s.model
    pos = "learned positions" if m.get("max_len") else "no position embeddings"
    return (f"{m.get('n_layers')} layers, d_model {m.get('d_model')}, {m.get('n_heads')} heads, "
            f"MLP ratio {m.get('mlp_ratio')}, state_dim {m.get('state_dim')}, {pos}")


def _command(s: Settings) -> str:
    flags = [("--steps", "steps"), ("--d", "d"), ("--n-points", "n_points"), ("--batch", "batch"),
             ("--val-size", "val_size"), ("--noise-std", "noise_std")]
    return command_line("python -m models.experiments.icl_sweep", s, settings(scale=s.scale), flags)


# the flags every experiment takes (add_common_args), each with the field of Settings it sets
COMMON_FLAGS = (("--accelerator", "accelerator"), ("--mixers", "mixers"), ("--precision", "precision"),
                ("--backend", "backend"), ("--workers", "workers"), ("--threads", "threads"),
                ("--deadline", "deadline"), ("--seed", "seed"), ("--lr", "task.lr"), ("--d-model", "model.d_model"))


def command_line(prog: str, s: Any, ref: Any, flags: list[tuple[str, str]]) -> str:
    """The command that runs ``s`` again: ``--scale``, then each flag whose field differs from ``ref``
    (the scale's preset). ``flags``: (flag, field of ``s``, or "task.KEY" / "model.KEY")."""
    def value(obj: Any, name: str) -> Any:
        if "." in name:
            part, key = name.split(".")
            return getattr(obj, part).get(key)
        return getattr(obj, name)

    cmd = [prog] + ([f"--scale {s.scale}"] if s.scale != "cpu" else [])
    for flag, name in (*COMMON_FLAGS, *flags):
        v = value(s, name)
        if v != value(ref, name):
            cmd.append(f"{flag} {','.join(map(str, v)) if isinstance(v, (tuple, list)) else v}")
    return " ".join(cmd + ["--out DIR"])


FAMILY_ORDER = ("attention", "linear attention", "decayed linear attention", "state-space model",
                "gated RNN", "delta rule", "gradient-step memory")


def plot(sweep: dict):
    """One panel per family (mixers in colour, baselines in grey), and every mixer's error at the last
    position; runs that diverged or did not finish are named in their panel, not drawn."""
    from matplotlib.figure import Figure

    s: Settings = sweep["settings"]
    fam_of = {m: dsf.zoo.get(m).family for m in sweep["runs"]}
    good = {m: r for m, r in sweep["runs"].items() if r.get("status") == "ok"}
    fams = [f for f in FAMILY_ORDER if f in fam_of.values()]
    fams += sorted(set(fam_of.values()) - set(fams))
    n_panels = len(fams) + 1
    cols = min(4, n_panels)
    nrows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(3.6 * cols, 3.0 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    i = list(range(s.n_points))
    base = sweep["baselines"] or {}
    styles = {"least_squares": ("k", "-", "least squares"), "ridge": ("0.45", "--", "ridge (Bayes λ)"),
              "one_step_gd": ("0.6", ":", "one GD step at η*")}
    zero = 1 + s.noise_std ** 2 / s.d           # predicting 0
    top = 1.15 * zero
    for ax, fam in zip(axes, fams):
        for name in PLOTTED:
            if name in base:
                color, ls, _ = styles[name]
                ax.plot(i, [e / s.d for e in base[name]], color=color, ls=ls, lw=1.2)
        members = [m for m in sweep["runs"] if fam_of[m] == fam]
        for k, m in enumerate(members):
            if m in good:
                ax.plot(i, [e / s.d for e in good[m]["curve"]], "o-", ms=3, lw=1.2, color=f"C{k}", label=m)
            else:
                ax.plot([], [], " ", label=f"{m}: {sweep['runs'][m]['status']}")
        ax.axhline(zero, color="0.8", lw=0.8)
        ax.set(title=fam, ylim=(0, top), xlabel="in-context examples i")
        ax.legend(fontsize=6.5, loc="lower right", framealpha=0.85)
    for ax in axes[:: cols]:
        ax.set_ylabel("squared error / d")
    ax = axes[len(fams)]
    last = sorted(((r["curve"][-1] / s.d, m) for m, r in good.items()), reverse=True)
    ax.barh(range(len(last)), [v for v, _ in last], color="C0")
    ax.set_yticks(range(len(last)), [m for _, m in last], fontsize=6.5)
    for name in PLOTTED:
        if name in base:
            color, ls, label = styles[name]
            ax.axvline(base[name][-1] / s.d, color=color, ls=ls, lw=1.2, label=label)
    ax.axvline(zero, color="0.8", lw=0.8, label="predict 0")
    ax.set(title=f"error / d at i = {s.n_points - 1}", xlim=(0, 1.7 * zero))   # room for the legend
    ax.legend(fontsize=6.5, loc="lower right", framealpha=0.85)
    for ax in axes[n_panels:]:
        ax.axis("off")
    fig.suptitle(f"In-context regression, d = {s.d}: {s.steps} steps × {s.batch} prompts for every mixer "
                 f"({s.scale} scale); grey: least squares (solid), Bayes ridge (dashed), one GD step at η* "
                 "(dotted), all on the same prompts", fontsize=9)
    return fig


def write(sweep: dict, out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "icl_sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows(sweep))
    (out / "icl_sweep.md").write_text(markdown(sweep))
    if any("curve" in r for r in sweep["runs"].values()):
        plot(sweep).savefig(out / "icl_sweep.png", dpi=110)


# -- command line -------------------------------------------------------------------------------------
def parse_mixers(text: str | None) -> list[str] | None:
    """"all" or None → every zoo mixer; else a comma-separated list, each checked against the zoo."""
    if text is None or text == "all":
        return None
    names = [m.strip() for m in text.split(",") if m.strip()]
    for m in names:
        check_mixer(m)
    return names


def add_common_args(p: argparse.ArgumentParser, default_out: str,
                    mixers_help: str = "comma-separated zoo names (default: all of them)") -> None:
    p.add_argument("--mixers", default=None, help=mixers_help)
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the scale's)")
    p.add_argument("--scale", choices=tuple(SCALES), default="cpu",
                   help="cpu: a minute or two a mixer on two CPU cores; gpu: the H200 preset (more steps, batch, "
                        "width, workers)")
    p.add_argument("--accelerator", default="cpu", help="Lightning accelerator: cpu, gpu, auto")
    p.add_argument("--precision", default="32-true", help="Lightning precision (32-true, bf16-mixed, ...)")
    p.add_argument("--backend", choices=("auto", "reference", "triton"), default=None,
                   help="mixer backend (auto: Triton kernels on CUDA where they exist)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes running mixers side by side (default: 1 on cpu scale, 6 on gpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default 1)")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds; runs still going then stop and are reported as such (gpu default 300)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path(default_out), help="output folder")


def _settings_of(a: argparse.Namespace) -> Settings:
    return settings(scale=a.scale, mixers=parse_mixers(a.mixers), steps=a.steps, d=a.d, n_points=a.n_points,
                    batch=a.batch, val_size=a.val_size, noise_std=a.noise_std, accelerator=a.accelerator,
                    precision=a.precision, backend=a.backend, workers=a.workers, threads=a.threads,
                    deadline=a.deadline, seed=a.seed, lr=a.lr, d_model=a.d_model)


def parser() -> argparse.ArgumentParser:
    """The command line of ``main``."""
    p = argparse.ArgumentParser(prog="python -m models.experiments.icl_sweep",
                                description=__doc__.split("\n")[0])
    add_common_args(p, "results/icl_sweep")
    p.add_argument("--d", type=int, default=None, help="input dimension (default 5)")
    p.add_argument("--n-points", type=int, default=None, help="(x, y) pairs per prompt (default 11)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--val-size", type=int, default=None)
    p.add_argument("--noise-std", type=float, default=None)
    return p


def main(argv: list[str] | None = None) -> dict:
    p = parser()
    a = p.parse_args(argv)
    try:
        s = _settings_of(a)
    except ValueError as err:
        p.error(str(err))
    print(f"icl_sweep: {len(s.mixers)} mixers, {s.steps} steps, batch {s.batch}, d={s.d}, "
          f"n_points={s.n_points}, {s.workers} worker(s) on {s.accelerator}; writing {a.out}", flush=True)
    sweep = run(s, a.out)
    bad = [m for m, r in sweep["runs"].items() if r["status"] != "ok"]
    print(f"done in {sweep['seconds']:.0f} s; wrote {a.out}/icl_sweep.{{csv,png,md}}"
          + (f"; not ok: {', '.join(bad)}" if bad else ""))
    return sweep


if __name__ == "__main__":
    # through the package, so that worker processes unpickle the same classes and functions
    from models.experiments.icl_sweep import main as _main

    _main()
