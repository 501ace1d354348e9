"""Test set-up: hypothesis profiles, and Triton's CPU interpreter when there is no GPU.

"ci" keeps `make test` bounded on 2 cores; "dev" explores more.
"""

import os

import pytest
import torch

# Must be set before triton is imported anywhere: kernels then run on the CPU in fp32.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=8, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def readme_mixers(tmp_path, monkeypatch):
    """README's "A new mixer" module as `my_mixers.py` in a fresh current directory, ready for
    `--import my_mixers`; the zoo, sys.path and sys.modules are restored after the test."""
    import re
    import sys
    from pathlib import Path

    from dsf import zoo

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    (tmp_path / "my_mixers.py").write_text(re.search(r"```python\n# my_mixers.py\n(.*?)```", readme, re.S)[1])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(zoo, "_REGISTRY", dict(zoo._REGISTRY))   # the registration ends with the test
    monkeypatch.delitem(sys.modules, "my_mixers", raising=False)
    return tmp_path
