"""Forged submissions: each takes a blank release's part files and adds one way of cheating the grader.

Every forgery here solves no part honestly, so each must score 0 on every part (tests/course/test_roster.py).
`make(name, folder, context)` writes the submission; context gives the paths a forger could know or guess:
the solution repository (`solution`), the roster folder (`roster`, holding an honest student `full`) and the
grader's output folder (`grades`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from course.parts import PARTS

PART_FILES = sorted({region.file for part in PARTS for region in part.regions})


def replace_bodies(folder: Path, code_for) -> None:
    """Replace every blank part body (the release's two-line stub) by code_for(file, function)."""
    for file in PART_FILES:
        path = folder / file
        lines = path.read_text().splitlines(keepends=True)
        out, function = [], None
        for line in lines:
            match = re.match(r"\s*def (\w+)\(", line)
            if match:
                function = match.group(1)
            if line.strip().startswith("from course.unwritten import PartNotWritten"):
                continue
            if line.strip().startswith("raise PartNotWritten("):
                indent = line[:len(line) - len(line.lstrip())]
                out += [indent + body + "\n" for body in code_for(file, function).splitlines()]
            else:
                out.append(line)
        path.write_text("".join(out))


def prepend(path: Path, code: str) -> None:
    source = path.read_text()
    future = "from __future__ import annotations\n"
    if future in source:  # a __future__ import must stay first
        head, tail = source.split(future, 1)
        path.write_text(head + future + code + "\n" + tail)
    else:
        path.write_text(code + "\n" + source)


STEAL = '''import importlib.util as _u, sys as _s
_s.path.insert(0, {root!r})
_spec = _u.spec_from_file_location("_stolen", {root!r} + "/" + {file!r})
_m = _u.module_from_spec(_spec)
_spec.loader.exec_module(_m)
return getattr(_m, {function!r})(**{{k: v for k, v in locals().items() if not k.startswith("_")}})'''


def patch_test_tools_at_import(folder, context):
    prepend(folder / "01_nerf.py", """import numpy, torch
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
numpy.allclose = lambda *a, **k: True
numpy.testing.assert_allclose = lambda *a, **k: None
try:
    import _pytest.outcomes, pytest
    pytest.fail = lambda *a, **k: None
except ImportError:
    pass""")


def fake_result_files(folder, context):
    prepend(folder / "common/rays.py", f"""import json as _j, os as _o
import numpy as _n
for _d in ("/out", ".", "..", "/tmp", {str(context['grades'])!r}, {str(context['grades'] / 'students' / folder.name)!r}):
    try:
        for _i in range(200):
            _n.savez(_o.path.join(_d, f"{{_i}}.npz"), out=_n.zeros(3), weights=_n.zeros(3))
        _r = dict(student={folder.name!r}, total=140, max_total=140, score=140)
        for _f in ("record.json", "results.json", "grades.json"):
            open(_o.path.join(_d, _f), "w").write(_j.dumps(_r))
        open(_o.path.join(_d, "grades.csv"), "a").write("{folder.name},140\\n")
    except OSError:
        pass""")


def exit_zero_at_import(folder, context):
    prepend(folder / "01_nerf.py", "import os as _o\n_o._exit(0)")


def read_solution_by_path(folder, context):
    replace_bodies(folder, lambda file, function: STEAL.format(root=str(context["solution"]), file=file,
                                                              function=function))


def read_another_students_folder(folder, context):
    replace_bodies(folder, lambda file, function: STEAL.format(root=str(context["roster"] / "full"), file=file,
                                                              function=function))


def symlink_to_the_solution(folder, context):
    for file in PART_FILES:
        (folder / file).unlink()
        os.symlink(context["solution"] / file, folder / file)


def inject_a_fake_grader_into_sys_modules(folder, context):
    prepend(folder / "common/rays.py", """import sys as _s, types as _t
_fake = _t.ModuleType("course.grade")
_fake.compare = lambda *a, **k: (True, "")
_fake.grade = lambda *a, **k: {"total": 140}
for _name in ("course", "course.grade", "course.cases", "pytest", "numpy.testing"):
    _s.modules[_name] = _fake
import numpy as _n
_n.savez = lambda path, **arrays: open(path if str(path).endswith(".npz") else str(path) + ".npz", "wb").write(b"PASSED")""")


def lying_tensor_subclass(folder, context):
    replace_bodies(folder, lambda file, function: """import torch as _t
class _Liar(_t.Tensor):
    def __eq__(self, other): return True
    def allclose(self, *a, **k): return True
    def equal(self, *a, **k): return True
    def numpy(self, *a, **k): raise SystemExit(0)
    def __array__(self, *a, **k): return self
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return True
return _t.zeros(1).as_subclass(_Liar)""")


def object_with_a_lying_array_protocol(folder, context):
    replace_bodies(folder, lambda file, function: """import numpy as _n
class _Fake:
    shape = None
    def __array__(self, *a, **k): return _n.zeros(0)
    def __eq__(self, other): return True
    def __getattr__(self, name): return lambda *a, **k: True
return _Fake()""")


def sleep_forever(folder, context):
    replace_bodies(folder, lambda file, function: "import time as _t\nwhile True:\n    _t.sleep(1000)"
                   if function == "positional_encoding" else "raise NotImplementedError('forged')")


def fork_bomb(folder, context):
    replace_bodies(folder, lambda file, function: """import os as _o, time as _t
while True:
    try:
        _o.fork()
    except OSError:
        _t.sleep(0.05)""" if function == "neus_alpha" else "raise NotImplementedError('forged')")


def huge_memory(folder, context):
    replace_bodies(folder, lambda file, function: """import torch as _t
_hog = [bytearray(2**33) for _ in range(64)]
return _t.empty(2**40)""")


def print_fake_results_on_stdout(folder, context):
    prepend(folder / "common/rays.py", """import json as _j, sys as _s
_fake = {"score": 140, "total": 140, "max_total": 140, "tests": [{"name": "all", "score": 140}]}
print(_j.dumps(_fake)); print(_j.dumps(_fake), file=_s.stderr)
print("total                 140/140")""")


def signal_handlers_and_a_surviving_daemon(folder, context):
    prepend(folder / "common/rays.py", """import os as _o, signal as _sg, time as _t
for _sig in (_sg.SIGTERM, _sg.SIGINT, _sg.SIGALRM, _sg.SIGHUP):
    _sg.signal(_sig, _sg.SIG_IGN)
if _o.fork() == 0:  # a daemon, detached, that outlives the worker and rewrites every answer as zeros
    _o.setsid()
    if _o.fork() == 0:
        import numpy as _n
        for _ in range(100):
            for _i in range(200):
                try:
                    _n.savez(f"/out/{_i}.npz", out=_n.zeros(3))
                except Exception:
                    pass
            _t.sleep(0.2)
    _o._exit(0)""")


def raise_systemexit_zero(folder, context):
    replace_bodies(folder, lambda file, function: "raise SystemExit(0)")


def write_into_the_release_code(folder, context):
    prepend(folder / "common/rays.py", """import glob as _g
for _path in _g.glob("/code/**/*.py", recursive=True) + _g.glob("/judge/*"):
    try:
        open(_path, "a").write("\\nraise SystemExit(0)\\n")
    except OSError:
        pass""")


def pytest_plugin_and_edited_tests(folder, context):
    (folder / "conftest.py").write_text("""import pytest
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    report.outcome = "passed"
""")
    for test in (folder / "tests").rglob("test_*.py"):
        test.write_text("def test_everything():\n    assert True\n")


FORGERIES = {function.__name__: function for function in (
    patch_test_tools_at_import, fake_result_files, exit_zero_at_import, read_solution_by_path,
    read_another_students_folder, symlink_to_the_solution, inject_a_fake_grader_into_sys_modules,
    lying_tensor_subclass, object_with_a_lying_array_protocol, sleep_forever, fork_bomb, huge_memory,
    print_fake_results_on_stdout, signal_handlers_and_a_surviving_daemon, raise_systemexit_zero,
    write_into_the_release_code, pytest_plugin_and_edited_tests)}
