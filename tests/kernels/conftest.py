"""Kernel tests: buffers the kernels allocate are poisoned with NaN, so unwritten elements show."""

import importlib

import pytest
import torch

# Every kernel module's allocator: each buffer a kernel writes comes from one of these.
POISONED = {"kernels.diag.recurrent": "_empty", "kernels.diag.chunk": "_empty", "kernels.delta.recurrent": "_empty",
            "kernels.delta.chunk": "_empty", "kernels.memory.chunk": "_empty", "kernels.memory.recurrent": "_empty",
            "kernels.softmax._utils": "_alloc"}


def _nan_empty(*shape, **kw):
    dtype = kw.get("dtype", torch.get_default_dtype())
    out = torch.empty(*shape, **kw)
    if dtype.is_floating_point:
        out.fill_(float("nan"))
    return out


def _nan_alloc(shape, dtype, device):
    return _nan_empty(*shape, dtype=dtype, device=device)


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    # (no import or attribute left out quietly: a module that stopped allocating through its hook
    # would run every test on torch.empty's leftovers)
    for name, attr in POISONED.items():
        monkeypatch.setattr(importlib.import_module(name), attr, _nan_alloc if attr == "_alloc" else _nan_empty)
    yield


@pytest.fixture
def count_launches(monkeypatch):
    """``count_launches(module, "_some_kernel")`` swaps a Triton kernel of ``module`` for a wrapper that
    still launches it and records each launch as (grid, keyword arguments); returns that list."""
    def install(module, name):
        kernel, seen = getattr(module, name), []

        class Recorder:
            def __getitem__(self, grid):
                def launch(*args, **kw):
                    seen.append((grid, kw))
                    return kernel[grid](*args, **kw)
                return launch

        monkeypatch.setattr(module, name, Recorder())
        return seen
    return install
