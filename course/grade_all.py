"""Grade a roster: every student folder of SUBMISSIONS_DIR, in parallel, resumable, with a gradebook.

    python -m course.grade_all SUBMISSIONS_DIR [--out grades] [--jobs N] [--engine local|ray|slurm]

Each student is one task of common/dispatch.py (local threads, a Ray cluster, or a SLURM array through
submitit); each task runs course.grade, whose sandboxed worker has the per-part time limits, the student's
total `--student_time_s` and the `--memory_mb` address-space limit. Written under OUT:
  students/<name>/record.json    the grader's record (written last: a student with one is finished, and a rerun
                                  after a crash skips them unless --regrade)
  students/<name>/results.json   Gradescope's autograder format (one test per case, hidden ones visible after
                                  publication)
  students/<name>/feedback.md    for the student: each case, expected vs got where it failed, the hint
  grades.csv                     one row per student, one column per part, the total
  summary.md                     the class: per part the mean and how many failed it, the commonest first failures
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import sys
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from common.dispatch import ENGINES, run_tasks  # noqa: E402
from common.errors import UserError  # noqa: E402
from course import grade, sandbox  # noqa: E402
from course.parts import PARTS  # noqa: E402


def grade_one(task: dict) -> dict:
    """One student (a dispatch task: module-level, JSON in and out). Writes nothing: the driver writes."""
    parts = PARTS
    if task.get("part_time_s"):
        from dataclasses import replace

        parts = tuple(replace(part, timeout_s=task["part_time_s"]) for part in PARTS)
    return grade.grade(Path(task["student_dir"]), parts, seed=task["seed"],
                       unsafe_no_sandbox=task["unsafe_no_sandbox"],
                       limits=sandbox.Limits(memory_mb=task["memory_mb"]), student_time_s=task["student_time_s"])


def gradescope_results(record: dict) -> dict:
    """https://gradescope-autograders.readthedocs.io/en/latest/specs/ (results.json): one test per case."""
    tests = []
    for part in record["parts"]:
        total_weight = sum(case["weight"] for case in part["cases"]) or 1.0
        for case in part["cases"]:
            share = part["max_points"] * case["weight"] / total_weight
            tests.append(dict(name=f"{part['part']}: {case['name']}", score=round(share if case["passed"] else 0.0, 2),
                              max_score=round(share, 2),
                              output=case["what"] + ("" if case["passed"] else f"\n{case['message']}\nHint: {part['hint']}"),
                              visibility="after_published" if case["hidden"] else "visible"))
    return dict(score=record["total"], output=f"sandbox: {record['sandbox']}; hidden inputs seed {record['seed']}",
                tests=tests)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def class_summary(records: dict[str, dict], errors: dict[str, str]) -> str:
    lines = [f"# Class summary: {len(records)} students graded" + (f", {len(errors)} not graded" if errors else ""), ""]
    if records:
        totals = [record["total"] for record in records.values()]
        max_total = next(iter(records.values()))["max_total"]
        lines += [f"Mean total {sum(totals) / len(totals):.1f} / {max_total}; full marks: "
                  f"{sum(t == max_total for t in totals)}; zero: {sum(t == 0 for t in totals)}.", "",
                  "| part | mean points | full marks | failed (not full marks) |", "|---|---|---|---|"]
        failed = {}
        for k, part in enumerate(PARTS):
            points = [record["parts"][k]["points"] for record in records.values()]
            failed[part.name] = sum(p < part.points for p in points)
            lines.append(f"| {part.name} | {sum(points) / len(points):.1f} / {part.points} | "
                         f"{sum(p == part.points for p in points)} | {failed[part.name]} |")
        worst = sorted(failed.items(), key=lambda item: -item[1])[:3]
        lines += ["", "Parts most students failed: " + ", ".join(f"{name} ({count})" for name, count in worst), ""]
        first_failures = Counter()
        for record in records.values():
            first = next((f"{part['part']}: {case['name']}" for part in record["parts"] for case in part["cases"]
                          if not case["passed"]), None)
            if first:
                first_failures[first] += 1
        lines += ["Commonest first failure (the first failing case of each student, in part order):", ""]
        lines += [f"- {name}: {count} students" for name, count in first_failures.most_common(5)] or ["- none"]
    if errors:
        lines += ["", "Not graded (rerun the same command to retry them):", ""]
        lines += [f"- {name}: {error}" for name, error in sorted(errors.items())]
    return "\n".join(lines) + "\n"


def write_gradebook(out: Path, names: list[str], errors: dict[str, str]) -> dict[str, dict]:
    records = {}
    for name in names:
        path = out / "students" / name / "record.json"
        if path.is_file():
            records[name] = json.loads(path.read_text())
    with open(out / "grades.csv.tmp", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", *[part.name for part in PARTS], "total", "max_total", "status"])
        for name in names:
            if name in records:
                record = records[name]
                writer.writerow([name, *[f"{r['points']:g}" for r in record["parts"]], f"{record['total']:g}",
                                 record["max_total"], "graded"])
            else:
                writer.writerow([name, *[""] * len(PARTS), "", sum(p.points for p in PARTS),
                                 "error: " + errors.get(name, "not graded")])
    os.replace(out / "grades.csv.tmp", out / "grades.csv")
    write_atomic(out / "summary.md", class_summary(records, {n: e for n, e in errors.items() if n not in records}))
    return records


def grade_all(submissions: Path, out: Path, *, jobs: int = 1, engine: str = "local", seed: int | None = None,
              unsafe_no_sandbox: bool = False, memory_mb: int = 4096, student_time_s: float = 300.0,
              part_time_s: float | None = None, regrade: bool = False, ray_address: str | None = None,
              slurm_options: dict | None = None) -> dict[str, dict]:
    submissions, out = Path(submissions).resolve(), Path(out).resolve()
    if not submissions.is_dir():
        raise UserError(f"{submissions} is not a folder: give the folder that holds one folder per student")
    if out == submissions or submissions in out.parents:
        raise UserError(f"{out}: write the grades outside the submissions folder (a student could name a folder "
                        "after a grade file)")
    if not unsafe_no_sandbox and not sandbox.sandbox_available():
        raise UserError(sandbox.NO_SANDBOX_MESSAGE)
    names = sorted(path.name for path in submissions.iterdir() if path.is_dir() and not path.is_symlink())
    if not names:
        raise UserError(f"{submissions} holds no student folder")
    (out / "students").mkdir(parents=True, exist_ok=True)
    seed = secrets.randbits(32) if seed is None else seed
    todo = [name for name in names if regrade or not (out / "students" / name / "record.json").is_file()]
    tasks = [dict(name=name, student_dir=str(submissions / name), seed=seed, unsafe_no_sandbox=unsafe_no_sandbox,
                  memory_mb=memory_mb, student_time_s=student_time_s, part_time_s=part_time_s) for name in todo]
    errors: dict[str, str] = {}

    def save(outcome) -> None:  # in this process, one at a time, as each student finishes
        name = outcome.task["name"]
        folder = out / "students" / name
        folder.mkdir(parents=True, exist_ok=True)
        if not outcome.ok:
            errors[name] = outcome.error
            print(f"{name}: not graded ({outcome.error})", flush=True)
            return
        record = outcome.result
        write_atomic(folder / "results.json", json.dumps(gradescope_results(record), indent=2) + "\n")
        write_atomic(folder / "feedback.md", grade.feedback_markdown(record))
        write_atomic(folder / "record.json", json.dumps(record, indent=2) + "\n")  # last: the 'finished' mark
        print(f"{name}: {record['total']:g}/{record['max_total']}", flush=True)

    if len(names) > len(todo):
        print(f"{len(names) - len(todo)} students already graded in {out} (--regrade to grade them again)")
    run_tasks(grade_one, tasks, engine=engine, jobs=jobs, on_done=save, ray_address=ray_address,
              slurm_options=slurm_options, log_dir=out / "submitit_logs")
    return write_gradebook(out, names, errors)


def main(argv=None) -> dict:
    from common.cli import run_main  # noqa: F401  (the same one-line errors as the scripts)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("submissions", type=Path, help="one folder per student, each a copy of the release")
    parser.add_argument("--out", type=Path, default=Path("grades"), help="where the gradebook goes (default: grades)")
    parser.add_argument("--jobs", type=int, default=1, help="students graded at once (1..256)")
    parser.add_argument("--engine", choices=ENGINES, default="local", help="local threads, a Ray cluster, SLURM")
    parser.add_argument("--ray_address", default=None, help="the Ray cluster (default: auto)")
    parser.add_argument("--slurm_partition", default=None, help="the SLURM partition for --engine slurm")
    parser.add_argument("--seed", type=int, default=None, help="seed of the hidden inputs, one for the class (default: random)")
    parser.add_argument("--student_time_s", type=float, default=300.0, help="wall time per student (10..3600 s)")
    parser.add_argument("--part_time_s", type=float, default=None, help="time per part, instead of each part's own (5..600 s)")
    parser.add_argument("--memory_mb", type=int, default=4096, help="address-space limit per process (2048..65536 MB)")
    parser.add_argument("--regrade", action="store_true", help="grade again the students already graded in --out")
    parser.add_argument("--unsafe_no_sandbox", action="store_true",
                        help="grade without bubblewrap (README, 'For instructors', says what that leaves open)")
    args = parser.parse_args(argv)
    for name, value, low, high in (("--jobs", args.jobs, 1, 256), ("--student_time_s", args.student_time_s, 10, 3600),
                                   ("--memory_mb", args.memory_mb, 2048, 65536)):
        if not low <= value <= high:
            raise UserError(f"{name} {value:g}: give a value in [{low}, {high}]")
    if args.part_time_s is not None and not 5 <= args.part_time_s <= 600:
        raise UserError(f"--part_time_s {args.part_time_s:g}: give a value in [5, 600]")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise UserError(f"--seed {args.seed}: give an integer in [0, 2^32)")
    slurm = {"slurm_partition": args.slurm_partition} if args.slurm_partition else None
    records = grade_all(args.submissions, args.out, jobs=args.jobs, engine=args.engine, seed=args.seed,
                        unsafe_no_sandbox=args.unsafe_no_sandbox, memory_mb=args.memory_mb,
                        student_time_s=args.student_time_s, part_time_s=args.part_time_s, regrade=args.regrade,
                        ray_address=args.ray_address, slurm_options=slurm)
    print(f"{len(records)} students in {args.out / 'grades.csv'}; class summary in {args.out / 'summary.md'}")
    return records


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
