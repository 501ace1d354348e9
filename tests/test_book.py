"""The book builds offline with every page executed and no warnings (``make book``'s command).

The build goes to a temporary ``--path-output`` (once per run, shared by pytest-xdist workers), so the
repository's ``book/_build`` is untouched.
Run it alone with ``pytest -m book``.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"


def _jupyter_book() -> str:
    beside = Path(sys.executable).with_name("jupyter-book")   # the venv's own, first
    found = str(beside) if beside.exists() else shutil.which("jupyter-book")
    if found is None:
        pytest.skip("jupyter-book is not installed (pip install -e '.[book]')")
    return found


def _build(out: Path) -> Path:
    cmd = [_jupyter_book(), "build", str(BOOK), "-W", "-n", "--keep-going", "--path-output", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    log = (run.stdout + run.stderr)[-6000:]
    assert run.returncode == 0, f"jupyter-book build failed (exit {run.returncode}):\n{log}"
    assert "WARNING:" not in run.stdout + run.stderr, log   # Sphinx's warnings (-W fails on them too)
    return out / "_build" / "html"


@pytest.fixture(scope="session")
def html(tmp_path_factory) -> Path:
    """The book built once per test run: under pytest-xdist (`make test`) the first worker to ask builds
    it into the run's shared temporary folder and the others wait on a lock, then read that build."""
    _jupyter_book()                                         # skips every worker's tests where it is missing
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return _build(tmp_path_factory.mktemp("book"))
    shared = tmp_path_factory.getbasetemp().parent          # this run's, shared by its workers
    status = shared / "book.status"                         # "ok", or why the build failed
    with open(shared / "book.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not status.is_file():
            try:
                _build(shared / "book")
                status.write_text("ok")
            except BaseException as e:   # the other workers fail with the same message, not a rebuild
                status.write_text(str(e) or type(e).__name__)
                raise
    if status.read_text() != "ok":
        pytest.fail(status.read_text(), pytrace=False)
    return shared / "book" / "_build" / "html"


@pytest.mark.book
def test_pages_exist(html):
    for page in ("intro.html", "dsf.html", "exercises.html", "index.html"):
        assert (html / page).is_file(), f"{page} was not written"


@pytest.mark.book
def test_dsf_chapter_is_executed(html):
    page = (html / "dsf.html").read_text(encoding="utf-8")
    assert "cell_output" in page, "no executed cell output in dsf.html"
    images = re.findall(r'<img[^>]+src="([^"]+\.png)"', page)
    assert images, "the Φ figure (a PNG) is missing from dsf.html"
    assert all((html / src).is_file() for src in images), images
    assert "max |Φu − recurrent|" in page          # the numerical check printed its errors
    assert "identities hold" in page               # the sympy section ran to the end


@pytest.mark.book
def test_exercises_page_runs_the_checker(html):
    page = (html / "exercises.html").read_text(encoding="utf-8")
    assert re.search(r"(\d+) of \1 checks pass", page)
    assert "FAIL" in page
