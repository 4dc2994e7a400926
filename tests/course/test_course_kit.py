"""The course kit (course/): the release blanks exactly the marked bodies and stays importable, and the grader
gives each part its points from the project's own tests: full marks to the solution, zero to the blank release,
exactly one part to a release with that part solved.

The three gradings run only the parts' unit tests (one pytest process each, ~10 s on 2 idle cores)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import UserError
from course import grade, release
from course.parts import BEGIN_MARKER, END_MARKER, NOTEBOOK_EXERCISES, PARTS

REPO_ROOT = Path(__file__).resolve().parents[2]
ALL_POINTS = sum(part.points for part in PARTS)

# Tests of code that no part marks: they must pass on the blank release as they do on the solution.
UNTOUCHED_TESTS = [
    "tests/scripts/test_01_nerf.py::test_central_crop_keeps_the_middle_half_of_rows_and_columns",
    "tests/scripts/test_04_hashnerf.py::test_trunc_exp_is_exact_forward_and_clamps_the_gradient_at_exp_15",
    "tests/kernels/test_sampling.py::test_draw_u_is_sorted_in_unit_interval_and_centred_when_deterministic",
    "tests/common/test_metrics.py",
]
MODULES = ["01_nerf", "03_mipnerf360", "04_hashnerf", "05_instant_neus", "common.rays", "kernels.sampling", "kernels.ray_marching",
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
    assert blank == ("def f(x):\n    \"\"\"doc\"\"\"\n    raise NotImplementedError('part_f: Eq. 1')\n\n\n"
                     "class A:\n    def g(self):\n        raise NotImplementedError('part_g: Eq. 2')\n")
    one_solved = release.release_python(source, "m.py", hints, solved={"part_f"})
    assert "    y = x + 1\n    return y\n\n" in one_solved and BEGIN_MARKER not in one_solved
    assert "raise NotImplementedError('part_g: Eq. 2')" in one_solved
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
            assert f"raise NotImplementedError({f'{part.name}: {region.hint}'!r})" in text
            assert BEGIN_MARKER not in text and END_MARKER not in text
    check = (f"import importlib, sys, pytest\nfor m in {MODULES!r}: importlib.import_module(m)\n"
             f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', *{UNTOUCHED_TESTS!r}]))")
    result = subprocess.run([sys.executable, "-c", check], cwd=blank_release, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_grader_gives_full_marks_to_the_solution():
    record = grade.grade(REPO_ROOT)
    assert record["total"] == record["max_total"] == ALL_POINTS, grade.format_table(record)
    assert all(r["passed"] and r["tests_passed"] == r["tests"] for r in record["parts"])


def test_grader_gives_zero_to_the_blank_release_with_each_parts_hint(blank_release):
    record = grade.grade(blank_release)
    assert record["total"] == 0, grade.format_table(record)
    for result, part in zip(record["parts"], PARTS):
        assert not result["passed"] and result["first_failure"].startswith(f"NotImplementedError: {part.name}: ")


def test_a_release_with_one_part_solved_scores_exactly_that_part_and_writes_json(tmp_path, capsys):
    # volume_render shares 01_nerf.py with positional_encoding (blank here): parts are functions, not files.
    release.release(tmp_path / "student", solved=["volume_rendering"], skip_notebooks=True)
    grade.main([str(tmp_path / "student"), "--json", str(tmp_path / "grades.json")])
    record = json.loads((tmp_path / "grades.json").read_text())
    scored = {r["part"]: r["points"] for r in record["parts"]}
    assert scored == {part.name: part.points if part.name == "volume_rendering" else 0 for part in PARTS}
    assert record["total"] == 20 and record["student"] == "student"
    table = capsys.readouterr().out
    assert "volume_rendering      20/20" in table and "total" in table


def test_grader_fails_the_parts_of_a_missing_file_and_rejects_a_missing_folder(tmp_path):
    missing = ["kernels/sampling.py"]
    part = next(p for p in PARTS if p.name == "inverse_cdf_sampling")
    cases = [(node.partition("::")[0][:-3].replace("/", "."), node.partition("::")[2], "passed", "")
             for node in part.tests]
    assert grade.score_part(part, cases, {}, [])["passed"]
    result = grade.score_part(part, cases, {}, missing)
    assert not result["passed"] and "kernels/sampling.py is missing" in result["first_failure"]
    with pytest.raises(UserError, match="is not a folder"):
        grade.grade(tmp_path / "nowhere")


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


def test_first_failure_is_the_exception_or_the_failing_assert_line_with_its_place():
    report = (">       assert torch.equal(a, b)\nE       assert False\nE        +  where False = ...\n\n"
              "tests/kernels/test_x.py:12: AssertionError")
    assert grade.first_line("assert False\n[+4 more lines; full report in element text]", report) == \
        "assert torch.equal(a, b) (tests/kernels/test_x.py:12)"
    assert grade.first_line("NotImplementedError: p: Eq. 4\nmore", report) == "NotImplementedError: p: Eq. 4"
