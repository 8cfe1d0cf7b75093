"""Building on a machine without the system libraries fails with one message naming them.

A library is hidden with CMake's own switch, CMAKE_DISABLE_FIND_PACKAGE_<name>, so the build
takes the same path as on a machine where the library is not installed. Only the configure step
runs: no compiler work.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed")
    return str(found)


def _configure(build: Path, *defines: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("cmake"), "-S", str(ROOT), "-B", str(build), "-G", "Ninja",
                           f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}", *defines],
                          capture_output=True, text=True, timeout=120)


def test_missing_libraries_are_named_in_one_message(tmp_path: Path):
    proc = _configure(tmp_path, "-DCMAKE_DISABLE_FIND_PACKAGE_CURL=ON",
                      "-DCMAKE_DISABLE_FIND_PACKAGE_simdjson=ON", "-DCMAKE_DISABLE_FIND_PACKAGE_ZLIB=ON")
    assert proc.returncode != 0
    err = proc.stderr
    assert err.count("CMake Error") == 1, err
    for package in ("libcurl4-openssl-dev", "libsimdjson-dev", "zlib1g-dev"):
        assert package in err, err
    assert "sudo bash scripts/install-deps.sh" in err, err
    # What is installed is not asked for.
    for package in ("libssl-dev", "libboost-dev", "libsqlite3-dev", "nlohmann-json3-dev"):
        assert package not in err, err


def test_a_missing_hiredis_is_named_with_its_package(tmp_path: Path):
    proc = _configure(tmp_path, "-DCMAKE_DISABLE_FIND_PACKAGE_Hiredis=ON")
    assert proc.returncode != 0
    assert proc.stderr.count("CMake Error") == 1, proc.stderr
    assert "libhiredis-dev" in proc.stderr and "sudo bash scripts/install-deps.sh" in proc.stderr, proc.stderr


def test_nothing_is_reported_when_every_library_is_there(tmp_path: Path):
    proc = _configure(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "install-deps" not in proc.stdout + proc.stderr


@pytest.mark.timeout(300)
def test_pip_install_shows_the_message(tmp_path: Path):
    # The build a user starts with `pip install .`, in its own build directory.
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-build-isolation", "--no-deps",
                           "-w", str(tmp_path / "wheel"), "-C", f"build-dir={tmp_path / 'build'}",
                           "-C", "cmake.define.CMAKE_DISABLE_FIND_PACKAGE_SQLite3=ON"],
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "libsqlite3-dev" in out and "sudo bash scripts/install-deps.sh" in out, out
