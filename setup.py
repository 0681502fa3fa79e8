"""Build the compiled parts of the sans-IO core; everything else is in pyproject.toml.

Two kinds of extension, both optional:

- ``smtpfront/core/_scan.c``, the DATA streamer's two scans (memchr per line);
- the core's hot modules compiled by mypyc from the same typed Python that runs without it
  (the session, the receive buffer, the parser, the streamer, events and replies), and with
  them, in one group, every other module a message or a connection runs through
  (``core.COMPILED_WITH_CORE``: the asyncio adapter, the sink's writer, lane and record, the
  ``Received:`` field, the session log's line, the held metrics).

Without a working C compiler, or with ``SMTPFRONT_PURE_PYTHON=1``, the package installs as
pure Python and behaves the same, about half as fast; ``smtpfront version`` and the serve
log say which core runs. A compiler that is present but fails stops the build (no silent
half-compiled install).
"""

from __future__ import annotations

import ast
import os
import sys
import tempfile

from setuptools import Extension, setup


def _listed(name: str) -> list[str]:
    """A tuple of module names in ``smtpfront/core/__init__.py``, read without importing the
    package (its dependencies are not here)."""
    with open(os.path.join("smtpfront", "core", "__init__.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise SystemExit(f"setup.py: smtpfront/core/__init__.py has no {name}")


def compiled_sources() -> list[str]:
    """The sources mypyc compiles into one group: the core's hot modules (``COMPILED_MODULES``)
    and the other per-message modules, which need the core's types (``COMPILED_WITH_CORE``)."""
    core = [f"smtpfront/core/{name}.py" for name in _listed("COMPILED_MODULES")]
    return core + [f"smtpfront/{name.replace('.', '/')}.py" for name in _listed("COMPILED_WITH_CORE")]


def _have_compiler() -> bool:
    """True when a C compiler can build a trivial file (what optional=True would find out late)."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe.c")
        with open(source, "w") as f:
            f.write("int main(void) { return 0; }\n")
        try:
            compiler.compile([source], output_dir=tmp)
        except Exception:
            return False
    return True


def extensions() -> list[Extension]:
    """The extension modules to build: both kinds, or none."""
    if os.environ.get("SMTPFRONT_PURE_PYTHON", "") not in ("", "0"):
        print("smtpfront: SMTPFRONT_PURE_PYTHON is set: installing the pure-Python core", file=sys.stderr)
        return []
    if not _have_compiler():
        print("smtpfront: no working C compiler: installing the pure-Python core", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    compiled = mypycify(
        # The core imports only the stdlib and itself; the rest of the package needs libraries the
        # build environment does not have, so mypy must not follow imports out of the listed
        # modules (what the adapter's modules import from elsewhere is typed Any here, so a
        # return of it is no error in this build, nor is an ignore that an Any makes unused;
        # `mypy --strict smtpfront` checks them typed).
        ["--follow-imports=skip", "--no-warn-return-any", "--no-warn-unused-ignores", *compiled_sources()],
        group_name="smtpfront.core._compiled",  # the shared library lives inside the package
        opt_level="3",
    )
    return [Extension("smtpfront.core._scan", ["smtpfront/core/_scan.c"]), *compiled]


setup(ext_modules=extensions())
