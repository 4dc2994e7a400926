"""The course kit (course/): the release blanks exactly the marked bodies, stays importable and never holds the
hidden cases; the grader's pieces (comparison, refusals). The gradings themselves are in test_roster.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.errors import UserError
from course import grade, grade_all, release, sandbox
from course.cases import Case, all_cases
from course.parts import BEGIN_MARKER, END_MARKER, LESSON_PARTS, NOTEBOOK_EXERCISES, PARTS

REPO_ROOT = Path(__file__).resolve().parents[2]
ALL_POINTS = sum(part.points for part in PARTS)

# Tests of code that no part marks: they must pass on the blank release as they do on the solution.
UNTOUCHED_TESTS = [
    "tests/scripts/test_01_nerf.py::test_central_crop_keeps_the_middle_half_of_rows_and_columns",
    "tests/scripts/test_04_hashnerf.py::test_trunc_exp_is_exact_forward_and_clamps_the_gradient_at_exp_15",
    "tests/kernels/test_sampling.py::test_draw_u_is_sorted_in_unit_interval_and_centred_when_deterministic",
    "tests/common/test_metrics.py",
]
MODULES = ["01_nerf", "02_mipnerf", "03_mipnerf360", "04_hashnerf", "05_instant_neus", "common.rays", "kernels.sampling", "kernels.ray_marching",
           "kernels.hash_encoding", "kernels.compositing"]


@pytest.fixture(scope="module")
def blank_release(tmp_path_factory):
    out = tmp_path_factory.mktemp("release") / "blank"
    release.release(out, skip_notebooks=not release.have_nbgrader())
    return out


def test_release_replaces_each_marked_body_by_its_hint_and_keeps_the_rest():
    source = ("def f(x):\n    \"\"\"doc\"\"\"\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n"
              "    ### END SOLUTION\n\n\nclass A:\n    def g(self):\n        ### BEGIN SOLUTION\n        return 2\n"
              "        ### END SOLUTION\n")
    hints = {"f": ("part_f", "Eq. 1"), "A.g": ("part_g", "Eq. 2")}
    blank = release.release_python(source, "m.py", hints, solved=set())
    assert blank == ("def f(x):\n    \"\"\"doc\"\"\"\n    " + release.STUB_IMPORT + "\n"
                     "    raise PartNotWritten('part_f', 'm.py', 'f', 'Eq. 1')\n\n\n"
                     "class A:\n    def g(self):\n        " + release.STUB_IMPORT + "\n"
                     "        raise PartNotWritten('part_g', 'm.py', 'A.g', 'Eq. 2')\n")
    one_solved = release.release_python(source, "m.py", hints, solved={"part_f"})
    assert "    y = x + 1\n    return y\n\n" in one_solved and BEGIN_MARKER not in one_solved
    assert "raise PartNotWritten('part_g', 'm.py', 'A.g', 'Eq. 2')" in one_solved
    with pytest.raises(UserError, match="belongs to no part"):
        release.release_python(source, "m.py", {"f": ("part_f", "Eq. 1")}, solved=set())
    with pytest.raises(UserError, match="is not marked"):
        release.release_python(source, "m.py", {**hints, "h": ("part_h", "Eq. 3")}, solved=set())
    with pytest.raises(UserError, match="unbalanced"):
        release.release_python(source.replace("        ### END SOLUTION\n", ""), "m.py", hints, solved=set())


def test_every_part_of_the_table_is_marked_in_the_solution_and_its_tests_exist():
    for part in PARTS:
        for region in part.regions:
            source = (REPO_ROOT / region.file).read_text()
            functions = [function for function, _, _ in release.marked_regions(source, region.file)]
            assert functions.count(region.function) == 1, (part.name, region)
        for node_id in part.tests:
            path, _, name = node_id.partition("::")
            assert f"def {name.split('[')[0]}(" in (REPO_ROOT / path).read_text(), node_id


def test_release_imports_and_its_untouched_parts_pass(blank_release):
    for part in PARTS:
        for region in part.regions:
            text = (blank_release / region.file).read_text()
            assert f"raise PartNotWritten({part.name!r}, {region.file!r}, {region.function!r}, {region.hint!r})" in text
            assert BEGIN_MARKER not in text and END_MARKER not in text
    check = (f"import importlib, sys, pytest\nfor m in {MODULES!r}: importlib.import_module(m)\n"
             f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', *{UNTOUCHED_TESTS!r}]))")
    result = subprocess.run([sys.executable, "-c", check], cwd=blank_release, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


QUICK_RUN = ["--quick", "--iters", "2", "--no-dead_model_check", "--video_frames", "0", "--n_test_views", "1"]


def test_a_release_runs_a_lesson_whose_parts_are_solved_and_stops_in_one_line_at_an_unsolved_one(blank_release,
                                                                                                  tmp_path):
    # Blank: 01's --quick stops at the first part it reaches, in one line naming the part and where it lives.
    stopped = subprocess.run([sys.executable, "01_nerf.py", *QUICK_RUN, "--outdir", str(tmp_path / "blank_run")],
                             cwd=blank_release, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr[-2000:]
    assert stopped.stderr.strip().splitlines()[-1].startswith(
        "error: ray_generation: not written yet: it is the body of rays_through_pixels() in common/rays.py ("), \
        stopped.stderr[-2000:]
    # Solved exactly the parts course/parts.py says 01 needs, every other part blank: the lesson runs to the end.
    student = tmp_path / "student"
    release.release(student, solved=LESSON_PARTS["01_nerf.py"], skip_notebooks=True)
    ran = subprocess.run([sys.executable, "01_nerf.py", *QUICK_RUN, "--outdir", str(tmp_path / "run")], cwd=student,
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert (tmp_path / "run" / "test").is_dir() and "not written yet" not in ran.stderr


def test_in_a_release_auto_runs_the_students_twin_not_the_cuda_source(tmp_path):
    """Outside a release, 04's --backend auto on a CPU runs the .cu compiled for the CPU; in a release it keeps the
    PyTorch twins, so that the lesson reaches the student's occupancy_update (here blank: it stops there)."""
    student = tmp_path / "student"
    release.release(student, solved=("ray_generation",), skip_notebooks=True)
    assert json.loads((student / "course" / "RELEASE.json").read_text()) == {"solved": ["ray_generation"]}
    ran = subprocess.run([sys.executable, "04_hashnerf.py", *QUICK_RUN, "--iters", "20", "--device", "cpu",
                          "--outdir", str(tmp_path / "run")], cwd=student, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert ran.returncode == 2 and "Traceback" not in ran.stderr, ran.stderr[-2000:]
    assert ran.stderr.strip().splitlines()[-1].startswith("error: occupancy_update: not written yet"), ran.stderr[-2000:]
    assert "backend auto -> emulated" not in ran.stdout


def test_the_release_holds_no_hidden_case_and_refuses_to_leak_one(blank_release, tmp_path):
    assert not (blank_release / "course" / "hidden").exists() and not (blank_release / "tests" / "course").exists()
    assert (blank_release / "course" / "cases.py").is_file()  # the visible cases ship
    hidden = [case for case in all_cases() if case.hidden]
    released = "".join(path.read_text(errors="replace") for path in blank_release.rglob("*.py"))
    assert hidden and not any(case.name in released for case in hidden)
    # A repository where a hidden case was pasted outside course/hidden/ (here into a notebook helper): refused,
    # and nothing is left behind.
    fake_root = tmp_path / "repo"
    for relative in release.repository_files(REPO_ROOT):
        if relative.suffix == ".py" and relative.parts[0] not in ("tests", "benchmarks", "notebooks"):
            (fake_root / relative).parent.mkdir(parents=True, exist_ok=True)
            (fake_root / relative).write_bytes((REPO_ROOT / relative).read_bytes())
    (fake_root / "common" / "pasted.py").write_text(f"# {hidden[0].name}: the annealing case\n")
    with pytest.raises(UserError, match=f"would leak the instructor-only tests: common/pasted.py .*{hidden[0].name}"):
        release.release(tmp_path / "out", root=fake_root, skip_notebooks=True)
    assert not (tmp_path / "out").exists()


def test_every_part_has_visible_and_hidden_cases_and_only_hidden_inputs_change_with_the_seed():
    cases = all_cases()
    for part in PARTS:
        kinds = {case.hidden for case in cases if case.part == part.name}
        assert kinds == {False, True}, part.name
    ordered = [case for part in PARTS for case in cases if case.part == part.name]
    one, two = grade.Request(ordered, seed=1), grade.Request(ordered, seed=2)
    for k, case in enumerate(ordered):
        arrays = [name for spec in one.calls[k]["args"] if isinstance(spec, dict) and "array" in spec
                  for name in [spec["array"]]]
        same = all(np.array_equal(one.inputs[name], two.inputs[name], equal_nan=True) for name in arrays) and \
            one.calls[k]["args"] == two.calls[k]["args"]
        assert same != case.hidden, case.name  # visible: fixed inputs; hidden: fresh ones per seed


def test_compare_names_the_output_the_tolerance_and_the_worst_entry():
    case = Case("p", "c", make=None, rtol=1e-4, atol=1e-5)
    expected = {"color": np.array([[0.5, 0.25], [1.0, 2.0]], np.float32)}
    assert grade.compare(case, expected, {"color": expected["color"] + 1e-6}) == (True, "")
    passed, message = grade.compare(case, expected, {"color": np.array([[0.5, 0.25], [1.5, 2.0]], np.float32)})
    assert not passed and message == ("output 'color': 1 of 4 entries beyond |got - expected| <= 1e-05 + 0.0001 "
                                      "|expected|; worst at [1, 0]: expected 1, got 1.5; max error 0.5")
    assert "shape (2,), expected (2, 2)" in grade.compare(case, expected, {"color": np.zeros(2)})[1]
    assert "is missing (got out)" in grade.compare(case, expected, {"out": np.zeros(2)})[1]
    nan = {"out": np.array([np.nan, 1.0])}
    assert grade.compare(case, nan, {"out": np.array([np.nan, 1.0])})[0]
    assert not grade.compare(case, nan, {"out": np.array([0.0, 1.0])})[0]
    assert not grade.compare(case, {"out": np.array([1.0])}, {"out": np.array([np.nan])})[0]
    assert "exact match required" in grade.compare(case, {"out": np.array([1, 2])}, {"out": np.array([1, 3])})[1]


def test_grader_refuses_without_a_sandbox_in_one_line_and_a_missing_folder(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="is not a folder"):
        grade.grade(tmp_path / "nowhere")
    monkeypatch.setattr(sandbox, "sandbox_available", lambda: False)
    with pytest.raises(UserError, match="bubblewrap .* --unsafe_no_sandbox") as refused:
        grade.main([str(tmp_path)])
    assert "\n" not in str(refused.value)
    with pytest.raises(UserError, match="--unsafe_no_sandbox"):
        grade_all.main([str(tmp_path), "--out", str(tmp_path.parent / "grades")])


def test_the_sandbox_sees_an_interpreter_that_lives_under_tmp_and_refuses_one_it_cannot_start(monkeypatch):
    """A CI checkout under /tmp has its virtual environment there: the sandbox's private /tmp must not hide it
    (it did, and every student of the roster scored 0: 'the worker died (exit status 127)'). An interpreter the
    sandbox cannot start stops the grader in one line instead of failing every student."""
    if not sandbox.sandbox_available():
        pytest.skip("bubblewrap sandbox not usable here (needs bwrap, setpriv and root)")
    import tempfile
    folder = Path(tempfile.mkdtemp(prefix="venv-like-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        (folder / "marker").write_text("seen from inside")
        (folder / "marker").chmod(0o644)
        monkeypatch.setattr(sandbox, "python_roots", lambda: [folder])
        command = sandbox.bwrap_command(Path("/"), Path("/"), Path("/tmp"), ["/bin/cat", str(folder / "marker")],
                                        uid=sandbox.SANDBOX_UID_BASE)
        finished = subprocess.run(command, capture_output=True, timeout=60)
        assert finished.stdout == b"seen from inside", finished.stderr
    finally:
        import shutil
        shutil.rmtree(folder)
    monkeypatch.undo()
    monkeypatch.setattr(sandbox, "_probe_result", {})
    monkeypatch.setattr(sys, "executable", "/nonexistent/venv/bin/python")
    with pytest.raises(UserError, match="cannot start inside the grader's sandbox") as refused:
        sandbox.sandbox_available()
    assert "\n" not in str(refused.value)


def test_a_symlinked_or_missing_part_file_is_refused_not_followed(tmp_path):
    student = tmp_path / "student"
    (student / "common").mkdir(parents=True)
    (student / "common" / "rays.py").symlink_to(REPO_ROOT / "common" / "rays.py")
    refused = grade.assemble(student, tmp_path / "code")
    assert refused["common/rays.py"].startswith("is not a regular file")
    assert refused["01_nerf.py"] == "is missing from the student's folder"
    assert not (tmp_path / "code" / "common" / "rays.py").exists()


def test_notebooks_are_released_through_nbgrader_with_only_the_marked_cells_changed(tmp_path):
    pytest.importorskip("nbgrader.preprocessors", reason="nbgrader is optional: pip install -r requirements-course.txt")
    import nbformat

    for exercise in NOTEBOOK_EXERCISES:
        out = tmp_path / Path(exercise.notebook).name
        release.release_notebook(REPO_ROOT / exercise.notebook, out, exercise.hint)
        before = nbformat.read(REPO_ROOT / exercise.notebook, as_version=4).cells
        after = nbformat.read(out, as_version=4).cells
        changed = [(old, new) for old, new in zip(before, after) if old.source != new.source]
        assert len(before) == len(after) and len(changed) == 1
        old, new = changed[0]
        assert BEGIN_MARKER in old.source and BEGIN_MARKER not in new.source
        assert f"# YOUR CODE HERE ({exercise.hint})\nraise NotImplementedError()" in new.source
        kept = [line for line in old.source.splitlines() if BEGIN_MARKER not in line and END_MARKER not in line]
        solution = old.source.split(BEGIN_MARKER)[1].split(END_MARKER)[0].strip().splitlines()
        assert [line for line in kept if line not in solution] == \
            [line for line in new.source.splitlines() if "YOUR CODE HERE" not in line and "NotImplemented" not in line]
