"""T = 0 through every family's functions: an empty output, the initial state back, its gradient through.

(Equal-length batches of T = 0 built their offsets with a zero arange step, a bare torch error.)
"""
import pytest
import torch

from kernels.delta import chunk_delta, fused_recurrent_delta
from kernels.diag import chunk_diag, fused_recurrent_diag
from kernels.memory import chunk_titans, fused_recurrent_titans

B, H, K, V = 2, 2, 16, 8


def _x():
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return dict(q=r(B, 0, H, K), k=r(B, 0, H, K), v=r(B, 0, H, V), g=-r(B, 0, H).abs(), beta=r(B, 0, H).sigmoid(),
                gk=-r(B, 0, H, K).abs())


CALLS = {
    "chunk_diag scalar": lambda x, s: chunk_diag(x["q"], x["k"], x["v"], "scalar", x["g"], **s),
    "chunk_diag key": lambda x, s: chunk_diag(x["q"], x["k"], x["v"], "key", x["gk"], **s),
    "fused_recurrent_diag": lambda x, s: fused_recurrent_diag(x["q"], x["k"], x["v"], "scalar", x["g"], **s),
    "chunk_delta": lambda x, s: chunk_delta(x["q"], x["k"], x["v"], x["beta"], x["g"], **s),
    "fused_recurrent_delta": lambda x, s: fused_recurrent_delta(x["q"], x["k"], x["v"], x["beta"], x["g"], **s),
    "chunk_titans": lambda x, s: chunk_titans(x["q"], x["k"], x["v"], x["g"], x["beta"], x["g"], **s),
    "fused_recurrent_titans": lambda x, s: fused_recurrent_titans(x["q"], x["k"], x["v"], x["g"], x["beta"], x["g"],
                                                                  **s),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_no_tokens_return_the_state_they_were_given(name):
    memory = "titans" in name
    S0 = torch.randn(B, H, K, V, generator=torch.Generator().manual_seed(1)).requires_grad_()
    Z0 = torch.randn(B, H, K, V, generator=torch.Generator().manual_seed(2))
    state = (S0, Z0) if memory else S0
    o, S = CALLS[name](_x(), dict(initial_state=state, output_final_state=True))
    S = S[0] if memory else S
    assert o.shape == (B, 0, H, V)
    torch.testing.assert_close(S, S0, rtol=0, atol=0)
    dS = torch.randn(B, H, K, V, generator=torch.Generator().manual_seed(3))
    (grad,) = torch.autograd.grad((S * dS).sum(), S0)
    torch.testing.assert_close(grad, dS, rtol=0, atol=0)
