"""Where a worker's CPU goes, by the compiled function that owns each sample.

    perf record -F 1000 --call-graph dwarf,16384 -p WORKER_PID -o perf.data -- sleep 3
    python loadtest/perf_owners.py perf.data [--top 40] [--under SYMBOL]

Once the hot path is compiled (mypyc), ``perf report --sort dso`` says only "libpython" for
most of it: the C API calls compiled code makes (attribute lookups, dicts, allocation) are
counted in the interpreter. This charges every sample to the innermost compiled function on
its stack (``CPyDef_module___Class___method``), or uvloop function, or else to its leaf, so the
shares say which of our functions spends the time, C API calls included. ``--under SYMBOL``
instead splits the inclusive time of one function by the callee it went through (the glue
frames of a Python-level call skipped). Needs ``perf script`` and a record with call graphs
(``--call-graph dwarf`` for a build without frame pointers).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
from collections.abc import Iterable, Iterator

# Frames that only carry a call from one function to another.
_GLUE = ("Vectorcall", "vectorcall", "(inlined)", "_PyObject_Call", "CPyPy_", "method_vectorcall",
         "cfunction_", "_PyObject_MakeTpCall")
_OWNERS = ("CPyDef_", "__pyx_f_", "__pyx_pw_")


def samples(lines: Iterable[str]) -> Iterator[list[str]]:
    """``perf script -F ip,sym`` output → each sample's stack, leaf first, as symbol names."""
    stack: list[str] = []
    for line in lines:
        parts = line.split(None, 1)
        if not parts:
            if stack:
                yield stack
            stack = []
            continue
        symbol = parts[1] if len(parts) > 1 else parts[0]
        stack.append(symbol.split("+0x")[0].strip())
    if stack:
        yield stack


def owners(stacks: Iterable[list[str]]) -> tuple[collections.Counter[str], int]:
    """Samples per owner (innermost compiled or uvloop frame, else the leaf), and the total."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for stack in stacks:
        total += 1
        owner = next((frame for frame in stack if frame.startswith(_OWNERS)), None)
        counts[owner if owner is not None else f"(no compiled frame) {stack[0]}"] += 1
    return counts, total


def callees(stacks: Iterable[list[str]], symbol: str) -> tuple[collections.Counter[str], int, int]:
    """The samples under ``symbol`` (its outermost frame) by the callee they went through,
    the number of those samples, and the total."""
    counts: collections.Counter[str] = collections.Counter()
    total = inside = 0
    for stack in stacks:
        total += 1
        at = [i for i, frame in enumerate(stack) if frame == symbol]
        if not at:
            continue
        inside += 1
        below = max(at) - 1
        while below >= 0 and any(glue in stack[below] for glue in _GLUE):
            below -= 1
        counts[stack[below] if below >= 0 else "(self)"] += 1
    return counts, inside, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a perf.data recorded with call graphs")
    parser.add_argument("--top", type=int, default=40, help="rows to print (40)")
    parser.add_argument("--under", metavar="SYMBOL", help="split this function's inclusive time by callee")
    args = parser.parse_args(argv)
    script = subprocess.run(["perf", "script", "-i", args.data, "-F", "ip,sym"], capture_output=True, text=True,
                            check=False)
    if not script.stdout.strip():
        print(f"perf script gave nothing: {script.stderr.strip()}", file=sys.stderr)
        return 1
    if script.returncode != 0:  # e.g. a library recorded from a tree that is gone: its frames stay unnamed
        print(f"perf script: {script.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    stacks = list(samples(script.stdout.splitlines()))
    if args.under:
        counts, inside, total = callees(stacks, args.under)
        print(f"{args.under}: {100 * inside / max(total, 1):.1f} % of {total} samples")
    else:
        counts, total = owners(stacks)
        print(f"{total} samples, by owner")
    for name, n in counts.most_common(args.top):
        print(f"{100 * n / max(total, 1):6.1f} %  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
