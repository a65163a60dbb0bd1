"""tools/mutation.py: its module map, its filters and its command line (no mutant is run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import mutation  # noqa: E402


def test_every_guarded_module_and_its_tests_exist() -> None:
    for module, tests in mutation.GUARDS.items():
        assert (ROOT / module).is_file(), module
        assert tests and all((ROOT / t).is_file() for t in tests), (module, tests)


def test_mutants_in_annotations_are_recognised(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "from __future__ import annotations\n"
        "def f(a: int | None, b: bytes = b'') -> list[int]:\n"
        "    x: dict[str, int] = {}\n"
        "    return [a or 0, len(b) + 1]\n"
    )
    spans = mutation.annotation_spans(src)
    assert mutation._inside((2, 13), spans)  # the | of int | None
    assert mutation._inside((2, 44), spans)  # inside the return annotation
    assert mutation._inside((3, 7), spans)
    assert not mutation._inside((4, 27), spans)  # the + of len(b) + 1: real code
    assert not mutation._inside((2, 32), spans)  # the default value b''


def test_command_line() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "tools" / "mutation.py"), *args],
            capture_output=True,
            text=True,
        )

    assert run("--help").returncode == 0
    missing = run("cas/no/such.py")
    assert missing.returncode == 2 and "no such module" in missing.stderr
    unguarded = run("cas/ids.py")
    assert unguarded.returncode == 2 and "--tests" in unguarded.stderr
