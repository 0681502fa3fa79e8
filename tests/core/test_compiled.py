"""The core runs compiled in CI, and the same source passes this folder's tests interpreted.

``setup.py`` compiles the core's hot modules with mypyc when a C compiler is there; CI has
one, so a build that silently fell back to Python must fail here. The interpreted core is
what an install without a compiler runs: the second test runs this whole folder against a
copy of the core's ``.py`` files alone, in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import smtpfront.core as core

# Set by the interpreted run below: the checks turn around (that run must not be compiled).
EXPECT_PURE = os.environ.get("SMTPFRONT_EXPECT_PURE") == "1"
ROOT = Path(__file__).resolve().parents[2]


def test_every_listed_module_is_compiled() -> None:
    import importlib

    for name in core.COMPILED_MODULES:
        module = importlib.import_module(f"smtpfront.core.{name}")
        interpreted = (module.__file__ or "").endswith(".py")
        if EXPECT_PURE:
            assert interpreted, f"{module.__file__}: the interpreted run loaded a compiled module"
        else:
            assert not interpreted, f"{name} is not compiled: pip install -e . with a C compiler (setup.py)"
    assert core.compiled() is not EXPECT_PURE


@pytest.mark.skipif(EXPECT_PURE, reason="the interpreted run holds the core alone")
def test_the_adapters_per_command_modules_are_compiled_with_the_core() -> None:
    import importlib

    for name in core.COMPILED_WITH_CORE:
        module = importlib.import_module(f"smtpfront.{name}")
        assert not (module.__file__ or "").endswith(".py"), f"{name} is not compiled (setup.py)"


def test_compiled_modules_are_current() -> None:
    # An edit that was not compiled yet would leave the old code running under the new tests.
    assert core.stale_modules() == [], "reinstall (pip install -e . or bash tests/run.sh) to compile the edits"


@pytest.mark.skipif(EXPECT_PURE, reason="this is the interpreted run itself")
def test_the_interpreted_core_passes_the_core_tests(tmp_path: Path) -> None:
    # A tree holding only sources: an empty top package (the real one imports the server),
    # the core's .py files, this test folder and pyproject.toml. Its own root, so nothing compiled is found.
    package = tmp_path / "smtpfront"
    shutil.copytree(ROOT / "smtpfront" / "core", package / "core", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    (package / "__init__.py").write_text('"""The core alone, interpreted."""\n')
    shutil.copytree(ROOT / "tests" / "core", tmp_path / "tests" / "core", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "tests" / "__init__.py").write_text("")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)  # the import contracts test_layers reads
    env = {**os.environ, "SMTPFRONT_EXPECT_PURE": "1", "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-P", "-m", "pytest", "-q", "-o", "addopts=", "-x", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path),
         "tests/core"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    tail = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail, tail


@pytest.mark.skipif(EXPECT_PURE, reason="the interpreted run holds the core alone")
def test_the_build_hash_covers_every_compiled_source(tmp_path: Path) -> None:
    """deploy/install.sh compiles again only when deploy/build_hash.sh's hash changes: an edit
    to any compiled module must change it, or the old extension keeps running."""
    for name in ("pyproject.toml", "setup.py", "requirements", "deploy", "smtpfront"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
        else:
            shutil.copy(source, tmp_path / name)

    def build_hash() -> str:
        return subprocess.run(["bash", "deploy/build_hash.sh", "dev"], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout

    before = build_hash()
    names = [f"core.{name}" for name in core.COMPILED_MODULES] + list(core.COMPILED_WITH_CORE)
    for name in names:
        path = tmp_path / "smtpfront" / (name.replace(".", "/") + ".py")
        text = path.read_text()
        path.write_text(text + "# edited\n")
        assert build_hash() != before, f"deploy/build_hash.sh does not hash smtpfront/{name}"
        path.write_text(text)
