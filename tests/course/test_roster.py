"""The roster, graded as an instructor would: `course.grade_all` on generated submissions (the solution, a blank
release, one part solved, a NeuS opacity that ignores cos_anneal_ratio, and every forgery of forgeries.py), two
at a time, sandboxed. The CSV must be exactly right: full marks to the solution, 0 to the blank release and to
every forgery, the one solved part alone, partial credit where only the hidden annealing cases fail. Then a
rerun resumes without grading anyone again.

One roster for all of it (~20 students, ~100 s on 2 loaded cores): each student's worker loads torch and the
five scripts once, which is most of a grading's cost."""
import csv
import json
import shutil
import sys
from pathlib import Path

import pytest

from course import grade_all, release, sandbox
from course.parts import PARTS

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forgeries  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
ALL_POINTS = sum(part.points for part in PARTS)
SANDBOX_ONLY = {"read_solution_by_path", "read_another_students_folder", "fork_bomb", "write_into_the_release_code",
                "signal_handlers_and_a_surviving_daemon"}  # unsafe without bubblewrap: never run unsandboxed


def copy_part_files(source: Path, dest: Path) -> None:
    for file in forgeries.PART_FILES:
        (dest / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / file, dest / file)


@pytest.fixture(scope="module")
def roster(tmp_path_factory):
    root = tmp_path_factory.mktemp("roster")
    blank = root / "blank_release"
    release.release(blank, skip_notebooks=True)
    submissions, grades = root / "submissions", root / "grades"
    submissions.mkdir()
    shutil.copytree(blank, submissions / "blank")
    (submissions / "full").mkdir()
    copy_part_files(REPO_ROOT, submissions / "full")
    release.release(submissions / "one_part", solved=["volume_rendering"], skip_notebooks=True)
    # NeuS opacity with the ratio ignored (always the annealed end, r = 1): the visible case (r = 1) passes,
    # the hidden annealing case does not.
    (submissions / "neus_no_annealing").mkdir()
    copy_part_files(blank, submissions / "neus_no_annealing")
    neus = submissions / "neus_no_annealing" / "05_instant_neus.py"
    solution = (REPO_ROOT / "05_instant_neus.py").read_text().split("### BEGIN SOLUTION\n")[1].split("    ### END")[0]
    text = neus.read_text()
    marker = next(line for line in text.splitlines() if "raise PartNotWritten(" in line and "'neus_opacity'" in line)
    neus.write_text(text.replace(marker, solution.replace("r = cos_anneal_ratio", "r = 1.0").rstrip("\n")))
    sandboxed = sandbox.sandbox_available()
    context = dict(solution=REPO_ROOT, roster=submissions, grades=grades)
    for name, make in forgeries.FORGERIES.items():
        if name in SANDBOX_ONLY and not sandboxed:
            continue
        shutil.copytree(blank, submissions / name)
        make(submissions / name, context)
    records = grade_all.grade_all(submissions, grades, jobs=2, seed=7, part_time_s=10, student_time_s=120,
                                  unsafe_no_sandbox=not sandboxed)
    return submissions, grades, records


def read_csv(grades: Path) -> dict:
    with open(grades / "grades.csv") as handle:
        return {row["student"]: row for row in csv.DictReader(handle)}


def test_gradebook_is_right_for_the_solution_the_blank_release_and_one_part(roster):
    _, grades, _ = roster
    rows = read_csv(grades)
    assert float(rows["full"]["total"]) == ALL_POINTS, rows["full"]
    assert all(float(rows["full"][part.name]) == part.points for part in PARTS)
    assert float(rows["blank"]["total"]) == 0
    assert {part.name: float(rows["one_part"][part.name]) for part in PARTS} == \
        {part.name: part.points if part.name == "volume_rendering" else 0 for part in PARTS}
    # Partial credit: visible (weight 1) and the guard case (weight 1) pass, the annealing case (weight 2) fails.
    assert float(rows["neus_no_annealing"]["neus_opacity"]) == 5.0 and float(rows["neus_no_annealing"]["total"]) == 5.0


def test_every_forgery_scores_zero_on_every_part(roster):
    submissions, grades, _ = roster
    rows = read_csv(grades)
    forged = [name for name in forgeries.FORGERIES if (submissions / name).is_dir()]
    assert len(forged) >= 10 or not sandbox.sandbox_available()
    for name in forged:
        assert rows[name]["status"] == "graded", (name, rows[name])
        assert [float(rows[name][part.name]) for part in PARTS] == [0.0] * len(PARTS), (name, rows[name])
        assert float(rows[name]["total"]) == 0.0, name
    # The files the forgers tried to write are not the grader's: its own record says 0.
    record = json.loads((grades / "students" / "fake_result_files" / "record.json").read_text())
    assert record["total"] == 0 and record["sandbox"] == ("bubblewrap" if sandbox.sandbox_available() else
                                                         "none (--unsafe_no_sandbox)")


def test_feedback_results_json_and_summary_say_what_failed(roster):
    _, grades, _ = roster
    feedback = (grades / "students" / "neus_no_annealing" / "feedback.md").read_text()
    assert "FAILED `hidden_neus_alpha_cos_anneal_ratio_between_0_and_1`" in feedback
    assert "expected" in feedback and "got" in feedback and "max error" in feedback and "|expected|" in feedback
    assert "Hint: Eq. 13 of NeuS with its code's 1e-5 guard" in feedback
    assert "Tensor-likes are not close" not in feedback
    results = json.loads((grades / "students" / "one_part" / "results.json").read_text())
    assert results["score"] == 20
    assert sum(test["max_score"] for test in results["tests"]) == pytest.approx(ALL_POINTS, abs=0.1)
    assert {test["visibility"] for test in results["tests"]} == {"visible", "after_published"}
    summary = (grades / "summary.md").read_text()
    assert "Parts most students failed" in summary and "Commonest first failure" in summary
    assert "| volume_rendering |" in summary


def test_a_rerun_resumes_without_grading_anyone_again(roster, capsys):
    submissions, grades, records = roster
    before = {path: path.stat().st_mtime_ns for path in (grades / "students").rglob("record.json")}
    again = grade_all.grade_all(submissions, grades, jobs=2, seed=7, unsafe_no_sandbox=not sandbox.sandbox_available())
    assert {path: path.stat().st_mtime_ns for path in (grades / "students").rglob("record.json")} == before
    assert {name: r["total"] for name, r in again.items()} == {name: r["total"] for name, r in records.items()}
    assert "already graded" in capsys.readouterr().out


def test_the_same_roster_command_dispatches_on_a_local_ray_cluster(local_ray_cluster, tmp_path):
    """Two students through Ray workers (a real `ray start --head` cluster, tests/conftest.py): the same gradebook."""
    submissions = tmp_path / "submissions"
    (submissions / "full").mkdir(parents=True)
    copy_part_files(REPO_ROOT, submissions / "full")
    release.release(submissions / "one_part", solved=["volume_rendering"], skip_notebooks=True)
    grade_all.main([str(submissions), "--out", str(tmp_path / "grades"), "--engine", "ray", "--ray_address",
                    local_ray_cluster, "--jobs", "2", "--seed", "3", "--part_time_s", "30"]
                   + ([] if sandbox.sandbox_available() else ["--unsafe_no_sandbox"]))
    rows = read_csv(tmp_path / "grades")
    assert float(rows["full"]["total"]) == ALL_POINTS and float(rows["one_part"]["total"]) == 20
    assert float(rows["one_part"]["volume_rendering"]) == 20
