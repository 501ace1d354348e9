"""Model tests: one intra-op thread.

The tensors here are tiny; with two OpenMP threads on a loaded 2-core runner a 700×32 matmul
was measured at 16 ms instead of 0.03 ms, so one thread is both faster and steadier.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def command_reruns():
    """``command_reruns(experiment, argv)``: the "Command:" line an experiment writes for the settings
    of ``argv`` names every flag that moves a setting off the scale's preset and no other — parsed
    again, it gives the same settings."""
    return _command_reruns


def _command_reruns(experiment, argv):
    s = experiment._settings_of(experiment.parser().parse_args(argv))
    words = experiment._command(s).split()
    assert words[:3] == ["python", "-m", experiment.__name__] and words[-2:] == ["--out", "DIR"]
    assert experiment._settings_of(experiment.parser().parse_args(words[3:-2])) == s
    assert len(words) == 5 + len(argv)
