"""Grade a student's folder: run each part's tests against the student's files, print a table, write JSON.

    python -m course.grade STUDENT_DIR [--json grades.json]

STUDENT_DIR is the student's copy of the release. From it the grader takes only the files that hold parts
(course/parts.py: 01_nerf.py, common/rays.py, ...); everything else, the tests included, comes from this
repository, so a grade is decided by the same tests and helpers that CI runs on the solution, and an edited test
cannot change it. The files are assembled in a temporary folder, where pytest runs every part's test node ids
in one process (pytest-timeout stops each test after its part's timeout_s, so an endless loop fails only its
part), and the JUnit XML report is read back. A part scores its points when all of its tests pass (skips aside,
as long as at least one ran); otherwise 0, with the first failing line (an assertion, or the student's
`NotImplementedError` hint for a part left blank). Student code runs with your permissions: grade in a
container or a throwaway account.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from common.errors import UserError  # noqa: E402
from course.parts import PARTS, Part  # noqa: E402
from course.release import repository_files  # noqa: E402

MESSAGE_CHARS = 300  # the first failing line is cut to this length in the JSON (90 in the printed table)


def student_files() -> list[Path]:
    return sorted({Path(region.file) for part in PARTS for region in part.regions})


def assemble(student_dir: Path, work_dir: Path) -> list[str]:
    """This repository's files with the student's versions of the part files on top. Returns the part files
    the student's folder lacks (their parts fail)."""
    for relative in repository_files(REPO_ROOT):
        (work_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / relative, work_dir / relative)
    missing = []
    for relative in student_files():
        if (student_dir / relative).is_file():
            shutil.copy2(student_dir / relative, work_dir / relative)
        else:
            missing.append(str(relative))
            (work_dir / relative).unlink(missing_ok=True)
    return missing


def split_node_id(node_id: str) -> tuple[str, str]:
    """'tests/a/test_b.py::test_c[x]' -> ('tests.a.test_b', 'test_c[x]'): JUnit's classname and name (no classes
    are used in the parts' tests)."""
    path, _, name = node_id.partition("::")
    return path[:-len(".py")].replace("/", "."), name


def first_line(message: str, report: str) -> str:
    """The line a student should read first: the exception's message, or for a bare `assert` (whose message
    is only "assert False") the failing assertion's source line and where it is, taken from the report."""
    line = next((text.strip() for text in (message or report).splitlines() if text.strip()), "")
    if line.startswith("assert"):
        sources = [text[1:].strip() for text in report.splitlines() if text.startswith(">")]
        places = [text.split(": ")[0] for text in report.splitlines() if re.match(r"^\S+\.py:\d+: \w", text)]
        if sources:
            line = sources[-1] + (f" ({places[-1]})" if places else "")
    return line


def read_junit(xml_path: Path) -> tuple[list[tuple[str, str, str, str]], dict[str, str]]:
    """The test cases (classname, name, outcome, first message line) and the collection errors by module."""
    cases, collection_errors = [], {}
    if not xml_path.is_file():
        return cases, collection_errors
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = first_line(element.get("message") or "", element.text or "") or tag
                break
        if not classname and outcome == "failed":  # a module that could not be imported
            collection_errors[name] = message
        else:
            cases.append((classname, name, outcome, message))
    return cases, collection_errors


def score_part(part: Part, cases, collection_errors, missing_files) -> dict:
    outcomes, first_failure = [], ""
    for region_file in {region.file for region in part.regions}:
        if region_file in missing_files:
            first_failure = first_failure or f"{region_file} is missing from the student's folder"
    for node_id in part.tests:
        module, name = split_node_id(node_id)
        matched = [case for case in cases if case[0] == module and (case[1] == name or (
            "[" not in name and case[1].startswith(name + "[")))]
        if not matched:
            outcomes.append("failed")
            first_failure = first_failure or collection_errors.get(module, f"{node_id} did not run")
        for _, _, outcome, message in matched:
            outcomes.append(outcome)
            if outcome == "failed":
                first_failure = first_failure or message
    n_passed = outcomes.count("passed")
    passed = not first_failure and n_passed > 0 and "failed" not in outcomes
    if not passed and not first_failure:
        first_failure = "every test of the part was skipped"
    return dict(part=part.name, points=part.points if passed else 0, max_points=part.points,
                passed=passed, tests_passed=n_passed, tests=len(outcomes),
                first_failure=first_failure[:MESSAGE_CHARS])


def grade(student_dir: Path, parts=PARTS) -> dict:
    """Run the parts' tests on student_dir's files; returns the gradebook record (also what --json writes)."""
    student_dir = Path(student_dir).resolve()
    if not student_dir.is_dir():
        raise UserError(f"{student_dir} is not a folder: give the student's copy of the release")
    with tempfile.TemporaryDirectory(prefix="nerf-course-grade-") as tmp:
        work_dir = Path(tmp) / "repo"
        missing = assemble(student_dir, work_dir)
        cases, collection_errors = [], {}
        for timeout_s in sorted({part.timeout_s for part in parts}):  # one pytest process per timeout value
            node_ids = [node for part in parts if part.timeout_s == timeout_s for node in part.tests]
            xml_path = Path(tmp) / f"report-{timeout_s}.xml"
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                       "--continue-on-collection-errors", f"--timeout={timeout_s}", f"--junitxml={xml_path}",
                       *node_ids]
            env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
            try:
                subprocess.run(command, cwd=work_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=timeout_s * len(node_ids) + 120)
            except subprocess.TimeoutExpired:
                pass  # what finished is in the report; the rest counts as not run
            more_cases, more_errors = read_junit(xml_path)
            cases += more_cases
            collection_errors.update(more_errors)
        results = [score_part(part, cases, collection_errors, missing) for part in parts]
    return dict(student=student_dir.name, total=sum(r["points"] for r in results),
                max_total=sum(r["max_points"] for r in results), parts=results)


def format_table(record: dict) -> str:
    rows = [("part", "points", "result", "first failure")]
    for r in record["parts"]:
        rows.append((r["part"], f"{r['points']}/{r['max_points']}",
                     f"{'passed' if r['passed'] else 'failed'} ({r['tests_passed']}/{r['tests']})",
                     r["first_failure"][:90]))
    rows.append(("total", f"{record['total']}/{record['max_total']}", "", ""))
    widths = [max(len(row[k]) for row in rows) for k in range(3)]
    return "\n".join("  ".join([cell.ljust(width) for cell, width in zip(row[:3], widths)] + [row[3]]).rstrip()
                     for row in rows)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("student_dir", type=Path, help="the student's copy of the release")
    parser.add_argument("--json", type=Path, default=None, help="write the grades here as JSON (for a gradebook)")
    args = parser.parse_args(argv)
    record = grade(args.student_dir)
    print(format_table(record))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
