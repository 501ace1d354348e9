"""Test set-up: hypothesis profiles, and Triton's CPU interpreter when there is no GPU.

"ci" keeps `make test` bounded on 2 cores; "dev" explores more.
"""

import os

import torch

# Must be set before triton is imported anywhere: kernels then run on the CPU in fp32.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=8, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
