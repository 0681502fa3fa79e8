"""The measuring tools in ``loadtest/`` run and report (what they measure belongs in the issue
notes, not in a test's pass or fail)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

LOADTEST = Path(__file__).resolve().parent.parent / "loadtest"


def test_calls_per_message_counts_a_real_workers_calls() -> None:
    done = subprocess.run([sys.executable, str(LOADTEST / "calls_per_message.py"), "--queue", "null:",
                           "--messages", "100", "--top", "40", "--driver", "loadgen"],
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    total = re.fullmatch(r"python calls per message: ([0-9.]+); C calls: ([0-9.]+)", lines[0])
    assert total is not None, lines
    assert float(total[1]) > 10  # metrics, hooks, the null sink...
    # (the core, the adapter's per-command modules, the sink's and logs.py run compiled:
    # setprofile does not see them); the null sink's commit runs once per message
    assert any(line.split()[-2:] == ["null.py", "commit"] for line in lines[1:]), lines


def test_redis_dedup_cost_compares_xadd_with_the_dedup_script() -> None:
    done = subprocess.run([sys.executable, str(LOADTEST / "redis_dedup_cost.py"), "--count", "50",
                           "--sizes", "1024"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    row = re.search(r"^\| 1,024 \| ([0-9.]+) \| ([0-9.]+) \| [0-9.]+x \|$", done.stdout, re.MULTILINE)
    assert row is not None, done.stdout
    assert float(row[1]) > 0 and float(row[2]) > 0


# `perf script -F ip,sym` as perf prints it: one frame a line (leaf first), a blank line a sample.
_PERF_SCRIPT = """\
\t    7f01 _PyObject_GenericGetAttrWithDict+0x12
\t    7f02 CPyDef_transaction___Transaction____commit+0x40
\t    7f03 CPyPy_protocol___SMTPProtocol____pump+0x10
\t    7f04 CPyDef_protocol___SMTPProtocol____pump+0x99

\t    7f05 tcp_sendmsg+0x1
\t    7f06 __pyx_f_6uvloop_4loop_8UVStream__try_write+0x2
\t    7f07 PyObject_VectorcallMethod+0x5
\t    7f08 CPyDef_protocol___SMTPProtocol___flush+0x3
\t    7f09 CPyDef_protocol___SMTPProtocol____pump+0x7

\t    7f0a CPyDef_protocol___SMTPProtocol____pump+0x1

\t    7f0b gc_collect_main+0x8
\t    7f0c _PyObject_GC_Alloc+0x2
"""


def _perf_owners() -> ModuleType:
    """``loadtest/perf_owners.py`` as a module (it is a script, not in a package)."""
    spec = importlib.util.spec_from_file_location("perf_owners", LOADTEST / "perf_owners.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_perf_owners_charges_each_sample_to_its_innermost_compiled_function() -> None:
    tool = _perf_owners()
    stacks = list(tool.samples(_PERF_SCRIPT.splitlines()))
    assert len(stacks) == 4 and stacks[0][0] == "_PyObject_GenericGetAttrWithDict"
    counts, total = tool.owners(stacks)
    assert total == 4
    assert counts == {"CPyDef_transaction___Transaction____commit": 1,
                      "__pyx_f_6uvloop_4loop_8UVStream__try_write": 1,
                      "CPyDef_protocol___SMTPProtocol____pump": 1,
                      "(no compiled frame) gc_collect_main": 1}


def test_perf_owners_splits_a_function_by_the_callee_it_went_through() -> None:
    tool = _perf_owners()
    counts, inside, total = tool.callees(tool.samples(_PERF_SCRIPT.splitlines()),
                                         "CPyDef_protocol___SMTPProtocol____pump")
    assert (inside, total) == (3, 4)
    # The CPyPy_ and vectorcall frames between two functions are glue, not callees.
    assert counts == {"CPyDef_transaction___Transaction____commit": 1, "CPyDef_protocol___SMTPProtocol___flush": 1,
                      "(self)": 1}
