"""The package is typed: `py.typed`, a current `_core.pyi`, and types that reach a user's mypy.

The stub is generated from the built extension by `scripts/stubs.py` (`make stubs`) and checked
in, so a reader and mypy see the core's real signatures. These tests regenerate it from the
extension this interpreter imports and compare, and run mypy on a user's script against the
installed package.
"""

from __future__ import annotations

import difflib
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import isthmus

ROOT = Path(__file__).resolve().parents[2]
STUB = ROOT / "python" / "isthmus" / "_core.pyi"
PACKAGE = Path(isthmus.__file__).resolve().parent


def test_stub_matches_the_built_extension(tmp_path: Path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "stubs.py"), "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"scripts/stubs.py failed:\n{proc.stdout}{proc.stderr}"
    fresh = (tmp_path / "isthmus" / "_core.pyi").read_text()
    current = STUB.read_text() if STUB.exists() else ""
    if fresh != current:
        diff = "".join(difflib.unified_diff(current.splitlines(True), fresh.splitlines(True),
                                            "python/isthmus/_core.pyi (checked in)",
                                            "generated from the built extension", n=1))
        pytest.fail("python/isthmus/_core.pyi is out of date with the extension: run `make stubs` "
                    f"(it rebuilds the extension first) and commit the .pyi.\n{diff[:4000]}",
                    pytrace=False)


def test_stub_generation_is_deterministic(tmp_path: Path):
    outputs = []
    for name in ("a", "b"):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "stubs.py"), "--output-dir", str(tmp_path / name)],
                       check=True, capture_output=True, timeout=120)
        outputs.append((tmp_path / name / "isthmus" / "_core.pyi").read_text())
    assert outputs[0] == outputs[1]
    assert " at 0x" not in outputs[0], "an object address leaked into the stub"


def test_package_ships_py_typed_and_the_stub():
    assert (PACKAGE / "py.typed").is_file(), f"{PACKAGE}: no py.typed marker"
    assert (PACKAGE / "_core.pyi").is_file(), f"{PACKAGE}: no _core.pyi"


USER_SCRIPT = '''
import isthmus
from isthmus import _core
from isthmus.roi import IntegrationCase

with isthmus.Sandbox(records=10) as api:
    url: str = api.url
    stats = api.stats()
case = IntegrationCase("CRM sync", contract_value=9_600, people=2, weeks=2.5)
roi: float = case.roi
masked: str = _core.redact_url("https://user:secret@example.com/")

wrong: int = _core.redact_url("https://example.com/")
IntegrationCase("CRM sync", contract_value=9_600, people=2, weeks="two")
'''


def test_a_users_mypy_sees_the_package_types(tmp_path: Path):
    site = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    if PACKAGE.parent not in site:
        pytest.skip(f"isthmus is imported from {PACKAGE}, not installed: `make install` to check what users get")
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                           "--python-executable", sys.executable, str(script)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    errors = [line.split(": error: ", 1)[1] for line in proc.stdout.splitlines() if ": error: " in line]
    lines = [int(line.split(":")[1]) for line in proc.stdout.splitlines() if ": error: " in line]
    # Without py.typed mypy would report the package as untyped; without the stub, _core as Any.
    assert len(errors) == 2, proc.stdout
    assert lines == [13, 14], proc.stdout
    assert 'expression has type "str", variable has type "int"' in errors[0], proc.stdout
    assert 'incompatible type "str"; expected "float"' in errors[1], proc.stdout
