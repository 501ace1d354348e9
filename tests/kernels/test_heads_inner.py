"""kernels._common.BACKWARD_HEADS_INNER: the chunk-parallel backward kernels (and the delta rule's W, U
before a backward) launched over (…, heads, chunks) instead of (…, chunks, heads). Each program does
the same work under another grid order, so every result is bit-identical; the float64 comparisons of
the other kernel tests run with the default (on)."""

import pytest
import torch

from kernels import _common
from kernels.delta import chunk as delta_chunk
from kernels.delta import chunk_delta
from kernels.diag import chunk as scalar_chunk
from kernels.diag import chunk_diag
from kernels.diag import chunk_key

B, T, H, K, V = 2, 70, 3, 16, 16
NC = B * -(-T // 64)   # chunks of 64 (the delta rule's default chunk_size too)


def _inputs(kind):
    gen = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    x = dict(q=r(B, T, H, K) * K ** -0.5, k=torch.nn.functional.normalize(r(B, T, H, K), dim=-1), v=r(B, T, H, V),
             S0=r(B, H, K, V))
    if kind == "scalar":
        x["g"] = torch.nn.functional.logsigmoid(r(B, T, H) + 3)
    if kind == "key":
        x["g"] = torch.nn.functional.logsigmoid(r(B, T, H, K) + 3) / 4
    if kind == "delta":
        x.update(beta=torch.rand(B, T, H, generator=gen), g=torch.nn.functional.logsigmoid(r(B, T, H) + 3))
    return x


def _run(kind, x):
    leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
    if kind == "delta":
        o, S = chunk_delta(leaves["q"], leaves["k"], leaves["v"], leaves["beta"], g=leaves["g"],
                           initial_state=leaves["S0"], output_final_state=True)
    else:
        o, S = chunk_diag(leaves["q"], leaves["k"], leaves["v"], kind, leaves["g"], initial_state=leaves["S0"],
                          output_final_state=True)
    gen = torch.Generator().manual_seed(6)
    loss = (o * torch.randn(o.shape, generator=gen)).sum() + (S * torch.randn(S.shape, generator=gen)).sum()
    return [o, S, *torch.autograd.grad(loss, list(leaves.values()))]


# (module, a kernel, its grid's leading dims) of each family
KERNELS = {"scalar": (scalar_chunk, "_dqdk_kernel", 1), "key": (chunk_key, "_dqk_inter_kernel", 1),
           "delta": (delta_chunk, "_wy_bwd_kernel", 0)}


@pytest.mark.parametrize("kind", ["scalar", "key", "delta"])
def test_backward_heads_inner(monkeypatch, count_launches, kind):
    """Output, final state and every gradient (initial state included) bit-identical either way; the
    grid puts the heads before the chunks only with the switch on."""
    module, name, lead = KERNELS[kind]
    seen = count_launches(module, name)
    x = _inputs(kind)
    runs = []
    for inner in (False, True):
        monkeypatch.setattr(_common, "BACKWARD_HEADS_INNER", inner)
        runs.append(_run(kind, x))
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert [(g[lead:], kw["HEADS_INNER"]) for g, kw in seen] == [((NC, H), False), ((H, NC), True)]


def test_chunk_grid(monkeypatch):
    """Heads inside the chunks where the switch (BACKWARD_HEADS_INNER, or a kernel's own) is on and the
    chunks fit a grid axis (65535)."""
    assert _common.chunk_grid((4,), 10, 3) == ((4, 3, 10), True)
    assert _common.chunk_grid((), 65535, 2) == ((2, 65535), True)
    assert _common.chunk_grid((), 65536, 2) == ((65536, 2), False)
    monkeypatch.setattr(_common, "BACKWARD_HEADS_INNER", False)
    assert _common.chunk_grid((4,), 10, 3) == ((4, 10, 3), False)
    assert _common.chunk_grid((4,), 10, 3, on=True) == ((4, 3, 10), True)   # a kernel's own switch
    assert _common.chunk_grid((4,), 10, 3, on=False) == _common.chunk_grid((4,), 10, 3)
