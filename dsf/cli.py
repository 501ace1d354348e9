"""The ``dsf`` command: ``dsf zoo [--miras]``, ``dsf phi NAME --out FILE.png`` and ``dsf check``."""

from __future__ import annotations

import argparse
import ast
import importlib
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from . import zoo
from .forms import check_options, chunked, parallel, phi, recurrent
from .spec import MixerSpec

__all__ = ["main", "zoo_rows", "miras_rows", "format_table", "forms_of", "kernel_support", "check_rows"]

FORMS = ("recurrent", "parallel", "chunked")
ZOO_DIMS = {"K": 64, "V": 64, "N": 16}
TOLERANCE = 1e-9
CHECK_PAIRS = ("chunked", "parallel", "oracle", "state")  # each against recurrent


# ---------------------------------------------------------------------------------------------
# dsf zoo


def forms_of(spec: MixerSpec) -> list[str]:
    """The forms that run on ``spec``, found by running each on a tiny random input.

    A memory without an exact chunked form lists "mini-batch≈" when the papers' approximation runs;
    a spec without ``random_inputs`` gives nothing to run them on: "? (no random_inputs)".
    """
    if spec.random_inputs is None:
        return ["? (no random_inputs)"]
    x = spec.draw_inputs(1, 3, 1, 2, 2, dtype=torch.float64, seed=0)
    calls = {"recurrent": lambda: recurrent(spec, **x), "parallel": lambda: parallel(spec, **x),
             "chunked": lambda: chunked(spec, chunk_size=2, **x),
             "mini-batch≈": lambda: chunked(spec, chunk_size=2, approximate="minibatch", **x)}
    ok = []
    for form in (*FORMS, "mini-batch≈"):
        if form == "mini-batch≈" and "chunked" in ok:
            continue
        try:
            calls[form]()
        except Exception:  # a form that cannot lower these terms does not exist for the mixer
            continue
        ok.append(form)
    return ok


def kernel_support(spec: MixerSpec) -> str:
    """The ``kernels`` cell: "—" without the package, else what ``kernels.supports(spec)`` says."""
    try:
        import kernels  # optional: the Triton kernels live in their own package
    except ImportError:
        return "—"
    supports = getattr(kernels, "supports", None)
    if supports is None:  # an unrelated package of the same name
        return "—"
    found = supports(spec)
    if not found:
        return "no"
    if not isinstance(found, dict):
        return "yes"
    # e.g. {"family": "diag", "chunked": "chunk", "recurrent": True, "step": True}
    parts = [k if v is True else f"{k}={v}" for k, v in found.items() if k != "family" and v]
    return f"{found.get('family', 'yes')}: {', '.join(parts)}" if parts else str(found.get("family"))


def _number(n: float) -> str:
    if n != n:  # no state_numel declared
        return "—"
    if math.isinf(n):
        return "∞"
    return str(int(n)) if float(n).is_integer() else f"{n:g}"


# Option variants whose forms or kernels differ from the default's, each with its state size
# (a spec's size string describes its default options).
ZOO_VARIANTS = (("titans", {"memory": "linear"}, "(K·V) × 2, with momentum", lambda d: 2 * d["K"] * d["V"]),)


def variant_label(name: str, options: dict) -> str:
    """How the zoo table spells a mixer with options: ``titans(memory='linear')``."""
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in options.items())})"


def spec_of(label: str) -> MixerSpec:
    """A zoo spec by name, or by the zoo table's spelling of one with options, ``titans(memory='linear')``
    (keyword options with Python literal values). Raises KeyError for an unknown name, ValueError for
    options the spelling or the mixer does not take."""
    label = label.strip()
    if not label.endswith(")") or "(" not in label:
        return zoo.get(label)
    name, _, inner = label[:-1].partition("(")
    try:
        call = ast.parse(f"f({inner})", mode="eval").body
        if call.args or any(kw.arg is None for kw in call.keywords):
            raise ValueError
        options = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError):
        raise ValueError(f"{label!r}: a mixer with options is spelt name(key=value, ...), each value a Python "
                         "literal (a string in quotes), as `dsf zoo` lists them: titans(memory='linear')") from None
    try:
        return zoo.get(name.strip(), **options)
    except TypeError as e:   # an option the mixer does not have
        raise ValueError(f"{label!r}: {e}") from None


def zoo_rows() -> tuple[list[str], list[list[str]]]:
    """Header and one row per registered mixer for the zoo table."""
    header = ["name", "family", "Λ structure", "state / head", "at K=V=64, N=16", "forms", "kernels"]
    rows = []
    variants = [(s.name, s, s.state_size, s.state_numel) for s in zoo.specs()]
    for name, options, size, numel in ZOO_VARIANTS:
        at = next(i for i, v in enumerate(variants) if v[0] == name) + 1
        variants.insert(at, (variant_label(name, options), zoo.get(name, **options), size, numel))
    for label, spec, size, numel in variants:
        n = numel(ZOO_DIMS) if numel else float("nan")
        rows.append([label, spec.family, str(spec.transition), size, _number(n),
                     ", ".join(forms_of(spec)), kernel_support(spec)])
    return header, rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """An aligned plain-text table, or a GitHub markdown one."""
    if markdown:
        def line(cells):
            return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
        return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in rows])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    def line(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def miras_rows() -> tuple[list[str], list[list[str]]]:
    """Where each mixer sits on the four Miras axes (the mixers that declare ``spec.miras``)."""
    header = ["name", "memory", "attentional bias", "retention", "algorithm", "exact forms"]
    rows = [[s.name, s.miras.memory, s.miras.bias, s.miras.retention, s.miras.algorithm,
             ", ".join(s.forms())] for s in zoo.specs() if s.miras is not None]
    return header, rows


def cmd_zoo(args: argparse.Namespace) -> int:
    header, rows = miras_rows() if args.miras else zoo_rows()
    if args.markdown:
        rows = [[f"`{r[0]}`", *r[1:]] for r in rows]
    print(format_table(header, rows, markdown=args.markdown))
    return 0


# ---------------------------------------------------------------------------------------------
# dsf phi


def phi_panels(name: str, T: int = 24, seed: int = 0, H: int = 2, K: int = 8,
               V: int = 8) -> list[tuple[str, torch.Tensor]]:
    """(label, [T, T] matrix) panels of Φ for random inputs: each head, or head 0's first channels."""
    spec = spec_of(name)
    x = spec.draw_inputs(1, T, H, K, V, dtype=torch.float64, seed=seed)
    P = phi(spec, **x)[0]
    if P.dim() == 3:
        return [(f"head {h}", P[h]) for h in range(P.shape[0])]
    return [(f"head 0, channel {c}", P[0, c]) for c in range(min(4, P.shape[1]))]


def _log_abs(P: torch.Tensor):
    """log10 |Φ| with exact zeros (above the diagonal, outside a window) masked out."""
    import numpy as np

    a = P.abs().numpy()
    return np.ma.masked_where(a == 0, np.log10(np.where(a == 0, 1.0, a)))


def _limits(mats) -> tuple[float, float]:
    hi = max(float(m.max()) for m in mats if m.count())
    lo = min(float(m.min()) for m in mats if m.count())
    # Decayed mixers reach 1e-30 far from the diagonal; eight decades keep the structure visible.
    return max(lo, hi - 8.0), hi


def _draw(ax, mat, vmin: float, vmax: float, title: str):
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    im = ax.imshow(mat, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("j (input)", fontsize=7)
    ax.set_ylabel("i (output)", fontsize=7)
    ax.tick_params(labelsize=6)
    return im


def _new_figure(w: float, h: float, **adjust: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on the Agg canvas: no pyplot, so no global backend or open-figure state. Fixed
    # margins, not constrained layout: that would double the drawing time of `dsf phi all`.
    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(**adjust)
    return fig


def draw_mixer(name: str, path: Path, T: int, seed: int) -> Path:
    """Heatmaps of log10 |Φ| for one mixer, one panel per head (or channel), saved to ``path``."""
    spec = spec_of(name)
    panels = phi_panels(name, T=T, seed=seed)
    mats = [_log_abs(P) for _, P in panels]
    vmin, vmax = _limits(mats)
    fig = _new_figure(3.0 * len(panels) + 1.0, 3.4, left=0.08 / len(panels), right=0.86,
                      bottom=0.14, top=0.82, wspace=0.3)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, _), mat in zip(axes, panels, mats):
        im = _draw(ax, mat, vmin, vmax, label)
    cax = fig.add_axes((0.89, 0.14, 0.012, 0.68))
    fig.colorbar(im, cax=cax, label="log10 |Φ_ij|")
    fig.suptitle(f"{name}: Φ (y = Φu), Λ {spec.transition}, T={T}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def draw_grid(names: Sequence[str], path: Path, T: int, seed: int) -> Path:
    """One panel per mixer (its first head or channel) in a single figure."""
    cols = 4
    rows = math.ceil(len(names) / cols)
    fig = _new_figure(3.2 * cols, 3.0 * rows, left=0.05, right=0.95, bottom=0.05, top=0.93,
                      wspace=0.45, hspace=0.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        label, P = phi_panels(name, T=T, seed=seed)[0]
        mat = _log_abs(P)
        vmin, vmax = _limits([mat])
        im = _draw(ax, mat, vmin, vmax, f"{name} ({label})\n{zoo.get(name).transition}")
        fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in axes[len(names):]:
        ax.set_axis_off()
    fig.suptitle(f"log10 |Φ_ij| of every mixer, random inputs, T={T}", fontsize=12)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def phi_names() -> list[str]:
    """The mixers that have Φ (the parallel form) and can draw inputs: the ones ``dsf phi all`` draws
    (a spec of yours registered without ``random_inputs`` is left out, not a traceback after the rest)."""
    return [s.name for s in zoo.specs() if "parallel" in s.forms() and s.random_inputs is not None]


IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def cmd_phi(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.name == "all":
        if out.suffix.lower() in IMAGE_SUFFIXES and not out.is_dir():   # (it became a directory x.png)
            raise SystemExit(f"dsf phi all: --out is the directory for one image per mixer and all.png, got "
                             f"{args.out!r}")
        paths = [draw_mixer(n, out / f"{n}.png", args.T, args.seed) for n in phi_names()]
        paths.append(draw_grid(phi_names(), out / "all.png", args.T, args.seed))
    else:
        # a directory, existing or written with a trailing slash ("newdir/" became newdir.png)
        is_dir = out.is_dir() or args.out.endswith(("/", os.sep))
        path = out / f"{args.name}.png" if is_dir else out
        path = path if path.suffix else path.with_suffix(".png")  # what savefig would write
        if path.suffix.lower() not in IMAGE_SUFFIXES:   # (checked before drawing: matplotlib's traceback after)
            raise SystemExit(f"dsf phi: --out must name an image ({', '.join(IMAGE_SUFFIXES)}) or a directory, "
                             f"got {args.out!r}")
        paths = [draw_mixer(args.name, path, args.T, args.seed)]
    for p in paths:
        print(p)
    return 0


# ---------------------------------------------------------------------------------------------
# dsf check


def rel_err(a: Any, b: Any) -> float:
    """‖a − b‖ / ‖b‖ (‖a − b‖ when b is zero); states compare field by field, the largest wins."""
    if isinstance(a, torch.Tensor):
        if not a.is_floating_point():
            return 0.0 if torch.equal(a, b) else math.inf
        if a.shape != b.shape:
            return math.inf
        diff, ref = float((a - b).norm()), float(b.norm())
        return diff / ref if ref > 0 else diff
    if isinstance(a, tuple):  # KVCache, AarenState, MemoryState (whose fields are tuples)
        return max((rel_err(x, y) for x, y in zip(a, b)), default=0.0)
    return 0.0 if a == b else math.inf


def check_mixer(spec: MixerSpec, T: int, chunk: int, seed: int) -> dict[str, float | str]:
    """Largest relative errors of each form against the recurrent one, in float64.

    A form the spec does not declare exact (``spec.forms()``) is reported as "—".
    """
    x = spec.draw_inputs(2, T, 2, 8, 8, dtype=torch.float64, seed=seed)
    o_rec, s_rec = recurrent(spec, **x)
    res: dict[str, float | str] = {"chunked": "—", "parallel": "—", "state": "—",
                                   "oracle": "—" if spec.oracle is None else rel_err(spec.run_oracle(**x), o_rec)}
    if "chunked" in spec.forms():
        o_chk, s_chk = chunked(spec, chunk_size=chunk, **x)
        res.update(chunked=rel_err(o_chk, o_rec), state=rel_err(s_chk, s_rec))
    if "parallel" in spec.forms():
        res["parallel"] = rel_err(parallel(spec, **x), o_rec)
    return res


def _fmt(e: float | str) -> str:
    return e if isinstance(e, str) else f"{e:.1e}"


def check_rows(names: Sequence[str], T: int, chunk: int, seed: int):
    """(header, rows, worst error, failing names) for ``dsf check``; the last row is the largest."""
    header = ["mixer", "chunked vs rec", "parallel vs rec", "oracle vs rec", "state chunked vs rec",
              "ok"]
    rows, failed = [], []
    largest: dict[str, float | str] = {p: "—" for p in CHECK_PAIRS}   # "—" where no mixer has the pair
    for name in names:
        try:
            res = check_mixer(spec_of(name), T, chunk, seed)
        except Exception as e:  # report the mixer as failing rather than stop the whole check
            res = {p: math.inf for p in CHECK_PAIRS}
            print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr)
        bad = False
        for p, e in res.items():
            if isinstance(e, float):
                bad |= not e <= TOLERANCE  # NaN counts as bad
                old = largest[p]
                largest[p] = e if isinstance(old, str) or e != e or e > old else old
        if bad:
            failed.append(name)
        rows.append([name, *(_fmt(res[p]) for p in CHECK_PAIRS), "FAIL" if bad else "ok"])
    worst = max([e for e in largest.values() if isinstance(e, float)] or [0.0],
                key=lambda e: math.inf if e != e else e)
    rows.append(["largest", *(_fmt(largest[p]) for p in CHECK_PAIRS),
                 "FAIL" if failed else "ok"])
    return header, rows, worst, failed


def check_names() -> list[str]:
    """What ``dsf check`` checks by default: every registered mixer, each zoo variant after its mixer."""
    names = list(zoo.names())
    for name, options, *_ in ZOO_VARIANTS:
        if name in names:
            names.insert(names.index(name) + 1, variant_label(name, options))
    return names


def cmd_check(args: argparse.Namespace) -> int:
    # a spec without random_inputs has no inputs to run its forms on: named, it is a usage error (it was a
    # failing row of "inf"); in the whole zoo's check it is left out and said so
    everything = args.names or check_names()
    bare = [n for n in everything if spec_of(n).random_inputs is None]
    if args.names and bare:
        raise SystemExit(f"dsf check: {', '.join(bare)} has no random_inputs to draw inputs from; give its "
                         "MixerSpec random_inputs=fn(B, T, H, K, V, dtype=, device=, seed=) -> dict")
    names = [n for n in everything if n not in bare]
    header, rows, worst, failed = check_rows(names, args.T, args.chunk, args.seed)
    print(f"float64, B=2, H=2, K=V=8, T={args.T}, chunk_size={args.chunk}, seed={args.seed}; "
          f"‖a−b‖/‖b‖ against the recurrent form")
    if bare:
        print(f"left out (no random_inputs): {', '.join(bare)}")
    table = format_table(header, rows).splitlines()
    print("\n".join(table[:-1] + [table[1], table[-1]]))  # a rule above the "largest" row
    if failed:
        print(f"FAILED: {len(failed)} of {len(names)} mixers exceed {TOLERANCE:g}: "
              f"{', '.join(failed)}")
        return 1
    print(f"OK: all {len(names)} mixers agree to {TOLERANCE:g} (largest error {worst:.1e})")
    return 0


# ---------------------------------------------------------------------------------------------


def import_modules(modules: Sequence[str]) -> None:
    """Import each module (``--import MODULE`` of ``dsf`` and ``dsf-train``), e.g. one that registers
    your own mixers with ``dsf.zoo.register``; the current directory is searched as ``python -m``
    would. An ImportError names the module."""
    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ImportError(f"--import {module}: {e}") from e


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dsf", description="Every sequence mixer as one DSF recurrence.")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (repeatable), e.g. one that registers your own mixers with "
                        "dsf.zoo.register; the current directory is searched too")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    z = sub.add_parser("zoo", help="table of every mixer in the zoo")
    z.add_argument("--markdown", action="store_true", help="print a GitHub markdown table")
    z.add_argument("--miras", action="store_true",
                   help="where each mixer sits on Miras's four axes (memory, attentional bias, "
                        "retention, algorithm)")
    z.set_defaults(func=cmd_zoo)

    f = sub.add_parser("phi", help="heatmaps of the DSF operator Φ for random inputs")
    f.add_argument("name", metavar="NAME", help="a mixer name, or 'all'")
    f.add_argument("--out", required=True,
                   help="PNG file (a directory for 'all': one PNG per mixer plus all.png)")
    f.add_argument("--T", type=int, default=24, help="sequence length (default 24)")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=cmd_phi)

    c = sub.add_parser("check", help="every form against the recurrent one, for every mixer")
    c.add_argument("names", nargs="*", metavar="NAME",
                   help="mixers to check, by name or as `dsf zoo` spells one with options, e.g. "
                        "\"titans(memory='linear')\" (default: all, and those variants)")
    c.add_argument("--T", type=int, default=13, help="sequence length (default 13)")
    c.add_argument("--chunk", type=int, default=5, help="chunk size (default 5)")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_check)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dsf`` command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        import_modules(args.imports)
    except ImportError as e:
        parser.error(str(e))
    if args.command == "phi":
        names = [] if args.name == "all" else [args.name]
    else:
        names = getattr(args, "names", [])
    for n in names:
        try:
            spec = spec_of(n)
            check_options(spec)   # an option's value, e.g. titans(memory='lin'), before any form runs
        except KeyError:
            extra = " (or 'all')" if args.command == "phi" else ""
            parser.error(f"unknown mixer {n!r}; the zoo has: {', '.join(zoo.names())}{extra}")
        except ValueError as e:
            parser.error(str(e))
        if args.command == "phi" and "parallel" not in spec.forms():
            parser.error(f"{n} has no Φ: its exact forms are {', '.join(spec.forms())} "
                         f"(a memory that is not linear in its state); mixers with Φ: {', '.join(phi_names())}")
    if getattr(args, "T", 1) < 1 or getattr(args, "chunk", 1) < 1:
        parser.error("--T and --chunk must be positive")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
