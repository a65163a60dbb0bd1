"""Coverage-guided fuzzing (atheris) of every decoder, a bounded number of runs per target.

``tools/fuzz.py TARGET`` runs one decoder under atheris with the properties of
tests/test_fuzz.py (only cas errors escape, one-line messages, accepted input
re-encodes stably).  atheris takes over the process, so each target runs in a
subprocess; a crash there (any other exception) fails the test and leaves the
input in the test's temporary directory.  ``pytest -s`` prints the runs per
target.  Skipped when atheris is not installed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("atheris")

FUZZ = Path(__file__).resolve().parent.parent / "tools" / "fuzz.py"
CI_RUNS = 3000
LONG_RUNS = 200_000
RUNS: dict[str, int] = {}


def _targets() -> list[str]:
    out = subprocess.run(
        [sys.executable, str(FUZZ), "--list"], capture_output=True, text=True, check=True
    ).stdout
    return out.split(":", 1)[1].split()


TARGETS = _targets()


@pytest.fixture(scope="module", autouse=True)
def _report_runs() -> Iterator[None]:
    yield
    if RUNS:
        print(f"\natheris runs: {sum(RUNS.values())} in all; {dict(sorted(RUNS.items()))}")


def fuzz(target: str, runs: int, tmp_path: Path) -> None:
    """Run one target for ``runs`` inputs; fail with the crash report if it crashes."""
    work = tmp_path / target
    work.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            str(FUZZ),
            target,
            "--corpus",
            str(work / "corpus"),
            f"-atheris_runs={runs}",
            f"-artifact_prefix={work}/",
            "-seed=1",
        ],
        capture_output=True,
        text=True,
        cwd=work,
    )
    crashes = sorted(p.name for p in work.glob("crash-*"))
    assert proc.returncode == 0 and not crashes, (crashes, proc.stdout[-3000:], proc.stderr[-3000:])
    done = re.search(r"^Done (\d+) ", proc.stderr, re.MULTILINE)
    assert done, proc.stderr[-2000:]
    RUNS[target] = RUNS.get(target, 0) + int(done.group(1))
    assert int(done.group(1)) >= runs


def test_every_decoder_has_a_target() -> None:
    for decoder in ("tree", "snapshot", "index", "config", "lock", "keyfile", "pack", "payload"):
        assert decoder in TARGETS


def test_atheris_targets(tmp_path: Path) -> None:
    """Every target, CI_RUNS inputs each, two at a time (each is one process)."""
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda t: fuzz(t, CI_RUNS, tmp_path), TARGETS))


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_atheris_target_long(target: str, tmp_path: Path) -> None:
    fuzz(target, LONG_RUNS, tmp_path)


def test_a_crash_is_reported(tmp_path: Path) -> None:
    """The harness itself: an exception other than a CasError makes the run fail with an input."""
    script = tmp_path / "boom.py"
    script.write_text(
        "import runpy, sys\n"
        f"sys.argv = [{str(FUZZ)!r}, *sys.argv[1:]]\n"
        f"fuzz = runpy.run_path({str(FUZZ)!r})\n"
        "def broken(data):\n"
        "    raise ValueError('not a cas error')\n"
        "fuzz['TARGETS']['tree'] = broken\n"
        "fuzz['main'](sys.argv)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script), "tree", "-atheris_runs=10", f"-artifact_prefix={tmp_path}/"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "not a cas error" in proc.stdout + proc.stderr
    assert list(tmp_path.glob("crash-*"))
