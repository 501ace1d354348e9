"""Error of the mini-batch approximation against the recurrence, per chunk size.

    python -m dsf.forms.memory_table [--T 64] [--K 8] [--theta-scale 1.0] [--seeds 3]

Each cell is ‖o_minibatch − o_recurrent‖ / ‖o_recurrent‖ over the outputs, in float64, averaged over
seeds, on ``random_inputs`` with every step size θ_t multiplied by ``--theta-scale``. A chunk of one
token is the recurrence (error 0); the dot-product bias on a linear memory is exact at any chunk.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch

from .. import zoo
from ..spec import MixerSpec
from ..testing import rel_err
from . import chunked, recurrent

__all__ = ["table_specs", "minibatch_errors", "main"]

CHUNKS = (1, 2, 4, 8, 16, 32, 64)


def table_specs() -> list[tuple[str, MixerSpec]]:
    """(label, spec): the zoo's memories and two built ones (a linear memory per bias)."""
    from ..zoo.memory import memory_spec

    rows = [(n, zoo.get(n)) for n in ("titans", "moneta", "yaad", "memora", "ttt_mlp", "ttt_linear")]
    rows.insert(1, ("titans (memory='linear')", zoo.get("titans", memory="linear")))
    rows.append(("matrix, ℓ2, ℓ2, gd (retained)",
                 memory_spec("matrix", "l2", "l2", "gd").with_options(grad_at="retained")))
    rows.append(("matrix, dot, ℓ2, momentum", memory_spec("matrix", "dot", "l2", "momentum")))
    return rows


def minibatch_errors(specs: Sequence[tuple[str, MixerSpec]] | None = None,
                     chunk_sizes: Sequence[int] = CHUNKS, T: int = 64, B: int = 2, H: int = 2,
                     K: int = 8, theta_scale: float = 1.0, seeds: Sequence[int] = (0, 1, 2),
                     threads: int | None = 1) -> tuple[list[str], list[list[str]], dict[str, list[float]]]:
    """(header, formatted rows, raw errors per label) of the mini-batch error table.

    ``threads``: torch's intra-op threads while measuring (restored after). The ops are tiny, and
    on a loaded machine a second thread stalls each of them (a 2×2 matmul then takes milliseconds).
    """
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _errors(table_specs() if specs is None else specs, chunk_sizes, T, B, H, K,
                       theta_scale, seeds)
    finally:
        torch.set_num_threads(before)


def _errors(specs, chunk_sizes, T, B, H, K, theta_scale, seeds):
    header = ["memory"] + [f"C={c}" for c in chunk_sizes]
    rows, raw = [], {}
    for label, spec in specs:
        errs = [0.0] * len(chunk_sizes)
        for seed in seeds:
            d = spec.random_inputs(B, T, H, K, K, dtype=torch.float64, seed=seed)
            d["theta"] = d["theta"] * theta_scale
            o, _ = recurrent(spec, **d)
            for i, c in enumerate(chunk_sizes):
                o_mb, _ = chunked(spec, chunk_size=c, approximate="minibatch", **d)
                errs[i] += rel_err(o_mb, o) / len(seeds)
        raw[label] = errs
        rows.append([label] + [f"{e:.1e}" for e in errs])
    return header, rows, raw


def main(argv: Sequence[str] | None = None) -> int:
    from ..cli import format_table

    p = argparse.ArgumentParser(prog="python -m dsf.forms.memory_table", description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--K", type=int, default=8, help="K = V per head")
    p.add_argument("--theta-scale", type=float, default=1.0)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    chunks = [c for c in CHUNKS if c <= args.T]
    header, rows, _ = minibatch_errors(chunk_sizes=chunks, T=args.T, K=args.K,
                                       theta_scale=args.theta_scale, seeds=range(args.seeds))
    print(f"mini-batch vs recurrent, relative output error; float64, B=2, H=2, K=V={args.K}, "
          f"T={args.T}, θ × {args.theta_scale:g}, mean over {args.seeds} seeds")
    print(format_table(header, rows, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
