"""The kernel tests' NaN poisoning reaches every kernel module's allocator (tests/kernels/conftest.py)."""

import importlib
import re
from pathlib import Path

import pytest
import torch

import kernels
from tests.kernels.conftest import POISONED

# allocates through diag.recurrent._empty, looked up at call time (test_diag_key_chunk checks it)
DELEGATES = {"kernels.diag.chunk_key"}


@pytest.mark.parametrize("name,attr", sorted(POISONED.items()))
def test_every_allocator_hands_out_nan(name, attr):
    alloc = getattr(importlib.import_module(name), attr)
    out = alloc((3, 2), torch.float32, "cpu") if attr == "_alloc" else alloc(3, 2, dtype=torch.float32, device="cpu")
    assert out.isnan().all()


def test_every_module_with_an_allocator_is_poisoned():
    """A kernel module that defines or imports an allocator hook must be listed in POISONED (or
    delegate to one that is): otherwise its tests would read torch.empty's leftovers."""
    root = Path(kernels.__file__).parent
    found = set()
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if re.search(r"^def _(empty|alloc)\(|^from \S+ import .*\b_empty\b", text, re.M):
            found.add(".".join(("kernels",) + path.relative_to(root).with_suffix("").parts))
    assert found == set(POISONED) | DELEGATES, found ^ (set(POISONED) | DELEGATES)


def test_the_gpu_checks_poisoning_reaches_every_hook(monkeypatch):
    """kernels.gpu_check poisons the same hooks on the GPU (it missed the softmax kernels' once)."""
    from kernels import gpu_check

    mods = {name: importlib.import_module(name) for name in POISONED}
    for name, attr in POISONED.items():   # (monkeypatch puts the real hooks back afterwards)
        monkeypatch.setattr(mods[name], attr, None)
    gpu_check._poison()
    for name, attr in POISONED.items():
        alloc = getattr(mods[name], attr)
        out = alloc((3, 2), torch.float32, "cpu") if attr == "_alloc" else alloc(3, 2, dtype=torch.float32,
                                                                                 device="cpu")
        assert out.isnan().all(), name
