"""Grade a student's folder, judging out of process: the process that decides the grade never imports student code.

    python -m course.grade STUDENT_DIR [--json grades.json] [--feedback feedback.md] [--seed N]
                                       [--unsafe_no_sandbox]

STUDENT_DIR is the student's copy of the release. From it the grader takes only the part files (course/parts.py:
01_nerf.py, common/rays.py, ...), as regular files (a symlink is refused: it could point at the solution), and
lays them over the PUBLIC release's code (every part blank) in a scratch folder. One worker process per student,
inside bubblewrap (course/sandbox.py: no network, no solution, no other student, its own user id, memory and
process limits), computes the outputs of the student's functions on inputs the grader chose (course/cases.py and
the instructor-only course/hidden/) and writes them back as plain numpy arrays. The grader, in its own process,
runs the same calls on the solution and compares: a part scores its points shared among its cases by weight.

Whatever the student's code does to its interpreter, to torch, to pytest, to its output files or to its exit
status, it only changes the numbers the grader then checks: a wrong number, a missing answer, a crash or a
timeout scores 0 for that case. Each part has `timeout_s` seconds (a worker that hangs or dies is killed and a new
one resumes at the next part), and the student a total of `student_time_s`.
"""
from __future__ import annotations

import argparse
import atexit
import json
import secrets
import shutil
import stat
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from common.errors import UserError  # noqa: E402
from course import sandbox, worker  # noqa: E402
from course.cases import Call, Case, all_cases  # noqa: E402
from course.parts import PARTS, Part  # noqa: E402

MESSAGE_CHARS = 400  # a failure's message is cut to this length
MAX_ANSWER_BYTES = 64 * 2**20  # an answer file that unpacks to more than this is refused unread
MAX_STUDENT_FILE_BYTES = 2 * 2**20
PUBLIC_CODE_DIRS = ("common", "kernels")  # with the top-level scripts: the code a worker may import
PUBLIC_CODE_FILES = ("course/__init__.py", "course/unwritten.py")  # the blank stubs' exception, nothing else of course/
POLL_S = 0.05
EXIT_GRACE_S = 5.0  # after its last answer, the worker has this long to exit before it is killed
STARTUP_S = 60.0  # the worker's interpreter and torch load within this, before the first part's clock starts


def student_files() -> list[Path]:
    return sorted({Path(region.file) for part in PARTS for region in part.regions})


_public_code: dict[str, Path] = {}
_public_lock = threading.Lock()


def public_code() -> Path:
    """The release's code with every part blank (built once per process, from this repository, by course.release's
    own blanking): the base the student's files are laid over. It holds no solution."""
    from course.release import release_python, part_hints, repository_files

    with _public_lock:
        if "dir" not in _public_code:
            out = Path(tempfile.mkdtemp(prefix="nerf-course-public-"))
            atexit.register(shutil.rmtree, out, True)  # removed when the grading process ends
            hints = part_hints()
            for relative in repository_files(REPO_ROOT):
                if not (len(relative.parts) == 1 and relative.suffix == ".py") and relative.parts[0] not in PUBLIC_CODE_DIRS \
                        and str(relative) not in PUBLIC_CODE_FILES:
                    continue
                target = out / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                if relative.suffix == ".py":
                    target.write_text(release_python((REPO_ROOT / relative).read_text(), str(relative),
                                                     hints.get(relative, {}), solved=set()))
                else:
                    shutil.copy2(REPO_ROOT / relative, target)
            for path in [out, *out.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            _public_code["dir"] = out
        return _public_code["dir"]


def assemble(student_dir: Path, code_dir: Path) -> dict[str, str]:
    """The public code with the student's part files on top. Returns {part file: why it was not taken}."""
    shutil.copytree(public_code(), code_dir)
    refused = {}
    for relative in student_files():
        source = student_dir / relative
        try:
            info = source.lstat()
        except OSError:
            refused[str(relative)] = "is missing from the student's folder"
            (code_dir / relative).unlink(missing_ok=True)
            continue
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_STUDENT_FILE_BYTES:
            refused[str(relative)] = "is not a regular file under 2 MB (a link is not accepted)"
            (code_dir / relative).unlink(missing_ok=True)
            continue
        (code_dir / relative).write_bytes(source.read_bytes())
    for path in [code_dir, *code_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o444)
    return refused


# ---------------------------------------------------------------------------------------------------------------
# Requests: the calls of every case, their inputs in one .npz
# ---------------------------------------------------------------------------------------------------------------
class Request:
    def __init__(self, cases: list[Case], seed: int):
        self.cases, self.seed, self.inputs, self.calls, self.references = cases, seed, {}, [], []
        for index, case in enumerate(cases):
            rng = np.random.default_rng([seed, zlib.crc32(case.name.encode())] if case.hidden else case.seed())
            call = case.make(rng)
            spec = self.encode(index, call, rng)
            self.calls.append(spec)

    def add_array(self, value) -> dict:
        name = f"a{len(self.inputs)}"
        self.inputs[name] = np.asarray(value)
        return {"array": name}

    def encode_value(self, value):
        if value is None:
            return {"none": True}
        if isinstance(value, np.ndarray):
            return self.add_array(value)
        return value

    def encode(self, index: int, call: Call, rng) -> dict:
        spec = dict(index=index, module=call.module, function=call.function,
                    args=[self.encode_value(value) for value in call.args],
                    kwargs={name: self.encode_value(value) for name, value in call.kwargs.items()})
        if call.grad_wrt:
            # The gradient of a random projection sum_k <c_k, output_k> (c drawn here) checks the whole Jacobian's
            # action on c, like a vector-Jacobian product test.
            outputs = reference_outputs(spec, self.inputs)
            spec["grad_wrt"] = list(call.grad_wrt)
            spec["cotangent"] = {key: self.add_array(rng.normal(size=value.shape).astype(value.dtype))["array"]
                                 for key, value in outputs.items() if np.issubdtype(value.dtype, np.floating)}
        return spec

    def write(self, judge_dir: Path) -> None:
        judge_dir.mkdir(parents=True, exist_ok=True)
        (judge_dir / "request.json").write_text(json.dumps({"calls": self.calls}))
        np.savez(judge_dir / "inputs.npz", **self.inputs)
        shutil.copy2(Path(worker.__file__), judge_dir / "worker.py")
        for path in [judge_dir, *judge_dir.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o444)


def reference_outputs(spec: dict, inputs: dict) -> dict:
    """The solution's answer, computed in this process (this repository's own modules)."""
    return worker.run_call(spec, inputs)


# ---------------------------------------------------------------------------------------------------------------
# Reading and comparing an answer
# ---------------------------------------------------------------------------------------------------------------
def read_answer(out_dir: Path, index: int) -> tuple[dict | None, str]:
    """(arrays, '') from <index>.npz, or (None, why not). Plain numbers only: allow_pickle=False."""
    npz, err = out_dir / f"{index}.npz", out_dir / f"{index}.json"
    if npz.is_file() and not npz.is_symlink():
        try:
            with zipfile.ZipFile(npz) as archive:
                if sum(item.file_size for item in archive.infolist()) > MAX_ANSWER_BYTES:
                    return None, "the answer is larger than 64 MB"
            with np.load(npz, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}, ""
        except Exception as error:  # a file the student's code mangled is a wrong answer, nothing more
            return None, f"the answer could not be read as arrays ({type(error).__name__})"
    if err.is_file() and not err.is_symlink():
        try:
            message = json.loads(err.read_bytes()[:4096].decode("utf-8", "replace"))["error"]
            return None, "your function raised " + " ".join(str(message).split())
        except Exception:
            return None, "the worker's error report could not be read"
    return None, ""


def describe(value) -> str:
    return np.array2string(np.asarray(value), precision=6, separator=", ", threshold=8)


def compare(case: Case, expected: dict, got: dict) -> tuple[bool, str]:
    """Output by output: present, same shape, numbers within |got - expected| <= atol + rtol |expected| (NaN where
    and only where the solution has NaN). Returns (passed, what differs: name, tolerance, worst entry)."""
    for key, want in expected.items():
        name = "the output" if key == "out" else (f"gradient w.r.t. argument {key[4:]}" if key.startswith("grad")
                                                 else f"output {key!r}")
        if key not in got:
            return False, f"{name} is missing (got {', '.join(sorted(got)) or 'nothing'})"
        have = got[key]
        if have.shape != want.shape:
            return False, f"{name}: shape {tuple(have.shape)}, expected {tuple(want.shape)}"
        if not (np.issubdtype(have.dtype, np.number) or have.dtype == np.bool_):
            return False, f"{name}: dtype {have.dtype}, expected numbers ({want.dtype})"
        if not np.issubdtype(want.dtype, np.floating):
            bad = have != want
            if bad.any():
                where = tuple(int(i) for i in np.argwhere(bad)[0])
                return False, (f"{name}: {int(bad.sum())} of {want.size} entries differ (exact match required); "
                               f"first at {list(where)}: expected {describe(want[where])}, got {describe(have[where])}")
            continue
        want64, have64 = want.astype(np.float64), have.astype(np.float64)
        nan_want, nan_have = np.isnan(want64), np.isnan(have64)
        error = np.abs(have64 - want64)
        tolerance = case.atol + case.rtol * np.abs(np.nan_to_num(want64))
        bad = (nan_want != nan_have) | (~nan_want & ~(error <= tolerance))
        if bad.any():
            excess = np.where(bad, np.nan_to_num(error - tolerance, nan=np.inf, posinf=np.inf), -np.inf)
            where = np.unravel_index(int(np.argmax(excess)), want.shape)
            finite = ~nan_want & ~nan_have
            max_error = float(np.max(error[finite])) if finite.any() else float("nan")
            return False, (f"{name}: {int(bad.sum())} of {want.size} entries beyond |got - expected| <= "
                           f"{case.atol:g} + {case.rtol:g} |expected|; worst at {[int(i) for i in where]}: expected "
                           f"{float(want64[where]):.6g}, got {float(have64[where]):.6g}; max error {max_error:.3g}")
    return True, ""


# ---------------------------------------------------------------------------------------------------------------
# Running the worker, part by part, with limits
# ---------------------------------------------------------------------------------------------------------------
def run_worker(request: Request, parts_of_calls: list[int], code_dir: Path, judge_dir: Path, out_dir: Path, *,
               sandboxed: bool, limits: sandbox.Limits, part_timeouts: list[float], student_time_s: float,
               log_path: Path) -> dict[int, str]:
    """Run the worker until every call has an answer file or was given up. Returns {call index: why it has no
    answer} for calls given up (timeout, a dead worker). A worker that hangs past its part's time, or dies, is
    killed and replaced by a new one starting at the first call of the next part."""
    n_calls, given_up = len(request.calls), {}
    deadline = time.monotonic() + student_time_s

    def answered(index):
        return (out_dir / f"{index}.npz").exists() or (out_dir / f"{index}.json").exists()

    first = 0
    while first < n_calls:
        process = sandbox.Worker(code_dir, judge_dir, out_dir, first, sandboxed=sandboxed, limits=limits,
                                 log_path=log_path)
        (out_dir / "ready").unlink(missing_ok=True)
        spawned = time.monotonic()
        current, part_started, why = first, None, ""
        try:
            while True:
                while current < n_calls and answered(current):
                    current += 1
                    if current < n_calls and parts_of_calls[current] != parts_of_calls[current - 1]:
                        part_started = time.monotonic()
                if part_started is None and ((out_dir / "ready").exists() or time.monotonic() - spawned > STARTUP_S):
                    part_started = time.monotonic()  # interpreter and torch loaded: the part's own time begins
                if current >= n_calls:
                    process.process.wait(timeout=EXIT_GRACE_S)  # all answered: a worker that lingers is killed
                    break
                now = time.monotonic()
                if process.poll() is not None:
                    why = f"the worker died (exit status {process.poll()}) before answering"
                    break
                if now > deadline:
                    why = f"the student's time limit ({student_time_s:g} s) ran out"
                    break
                if part_started is not None and now - part_started > part_timeouts[parts_of_calls[current]]:
                    why = f"no answer within the part's time limit ({part_timeouts[parts_of_calls[current]]:g} s)"
                    break
                time.sleep(POLL_S)
        except Exception:
            why = why or "the worker did not finish in time"
        finally:
            process.kill()
        if current >= n_calls:
            break
        if why.startswith("the student's time limit"):
            for index in range(current, n_calls):
                if not answered(index):
                    given_up[index] = why
            break
        part = parts_of_calls[current]
        following = current
        while following < n_calls and parts_of_calls[following] == part:
            if not answered(following):
                given_up[following] = why
            following += 1
        first = following
    return given_up


def grade(student_dir: Path, parts=PARTS, *, seed: int | None = None, unsafe_no_sandbox: bool = False,
          limits: sandbox.Limits = sandbox.Limits(), student_time_s: float = 300.0, keep_log: Path | None = None,
          cases: list[Case] | None = None) -> dict:
    """Grade student_dir; returns the record (what --json writes), decided in this process only."""
    student_dir = Path(student_dir).resolve()
    if not student_dir.is_dir():
        raise UserError(f"{student_dir} is not a folder: give the student's copy of the release")
    sandboxed = sandbox.sandbox_available()
    if not sandboxed and not unsafe_no_sandbox:
        raise UserError(sandbox.NO_SANDBOX_MESSAGE)
    seed = secrets.randbits(32) if seed is None else int(seed)
    cases = all_cases() if cases is None else cases
    by_part = [(part, [case for case in cases if case.part == part.name]) for part in parts]
    ordered = [case for _, part_cases in by_part for case in part_cases]
    parts_of_calls = [k for k, (_, part_cases) in enumerate(by_part) for _ in part_cases]
    request = Request(ordered, seed)
    with tempfile.TemporaryDirectory(prefix="nerf-course-grade-") as tmp:
        tmp = Path(tmp)
        tmp.chmod(0o755)
        code_dir, judge_dir, out_dir = tmp / "code", tmp / "judge", tmp / "out"
        refused = assemble(student_dir, code_dir)
        request.write(judge_dir)
        out_dir.mkdir()
        log_path = tmp / "worker.log"
        given_up = run_worker(request, parts_of_calls, code_dir, judge_dir, out_dir, sandboxed=sandboxed,
                              limits=limits, part_timeouts=[float(part.timeout_s) for part, _ in by_part],
                              student_time_s=student_time_s, log_path=log_path)
        answers = [read_answer(out_dir, index) for index in range(len(ordered))]
        if keep_log is not None:
            keep_log.write_bytes(log_path.read_bytes()[-20000:] if log_path.exists() else b"")
    results = []
    for k, (part, part_cases) in enumerate(by_part):
        first_index = parts_of_calls.index(k) if k in parts_of_calls else 0
        case_results = []
        for offset, case in enumerate(part_cases):
            index = first_index + offset
            (got, why) = answers[index]
            missing_files = [f"{file} {reason}" for file, reason in refused.items()
                             if file in {region.file for region in part.regions}]
            if got is None:
                passed, message = False, why or given_up.get(index, "no answer")
                if missing_files:
                    message = f"{missing_files[0]}: {message}"
            else:
                passed, message = compare(case, reference_outputs(request.calls[index], request.inputs), got)
            case_results.append(dict(name=case.name, hidden=case.hidden, weight=case.weight, passed=passed,
                                     what=case.what, message=message[:MESSAGE_CHARS]))
        total_weight = sum(case.weight for case in part_cases)
        passed_weight = sum(r["weight"] for r in case_results if r["passed"])
        points = round(part.points * passed_weight / total_weight, 2) if total_weight else 0.0
        first_failure = next((f"{r['name']}: {r['message']}" for r in case_results if not r["passed"]), "")
        results.append(dict(part=part.name, points=points, max_points=part.points, passed=points == part.points,
                            tests_passed=sum(r["passed"] for r in case_results), tests=len(case_results),
                            hint=part.regions[0].hint, first_failure=first_failure[:MESSAGE_CHARS],
                            cases=case_results))
    return dict(student=student_dir.name, total=round(sum(r["points"] for r in results), 2),
                max_total=sum(r["max_points"] for r in results), seed=seed,
                sandbox="bubblewrap" if sandboxed else "none (--unsafe_no_sandbox)", parts=results)


def format_table(record: dict) -> str:
    rows = [("part", "points", "cases", "first failure")]
    for r in record["parts"]:
        rows.append((r["part"], f"{r['points']:g}/{r['max_points']}", f"{r['tests_passed']}/{r['tests']}",
                     r["first_failure"][:110]))
    rows.append(("total", f"{record['total']:g}/{record['max_total']}", "", ""))
    widths = [max(len(row[k]) for row in rows) for k in range(3)]
    return "\n".join("  ".join([cell.ljust(width) for cell, width in zip(row[:3], widths)] + [row[3]]).rstrip()
                     for row in rows)


def feedback_markdown(record: dict) -> str:
    """The student's feedback: per part, each case's name, what it checks, and for a failure the difference
    (expected vs got, the tolerance, where) and the part's hint."""
    lines = [f"# Feedback for {record['student']}: {record['total']:g} / {record['max_total']}", ""]
    for r in record["parts"]:
        lines += [f"## {r['part']}: {r['points']:g} / {r['max_points']}", ""]
        for case in r["cases"]:
            tag = "hidden" if case["hidden"] else "visible"
            mark = "passed" if case["passed"] else "FAILED"
            lines.append(f"- {mark} `{case['name']}` ({tag}, weight {case['weight']:g}): {case['what']}")
            if not case["passed"]:
                lines.append(f"  - {case['message']}")
        if not r["passed"]:
            lines += ["", f"Hint: {r['hint']}"]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("student_dir", type=Path, help="the student's copy of the release")
    parser.add_argument("--json", type=Path, default=None, help="write the grades here as JSON (for a gradebook)")
    parser.add_argument("--feedback", type=Path, default=None, help="write the student's feedback here (Markdown)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the hidden cases' inputs (default: random)")
    parser.add_argument("--unsafe_no_sandbox", action="store_true",
                        help="grade without bubblewrap (the worker then runs as you: README, 'For instructors')")
    args = parser.parse_args(argv)
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise UserError(f"--seed {args.seed}: give an integer in [0, 2^32)")
    record = grade(args.student_dir, seed=args.seed, unsafe_no_sandbox=args.unsafe_no_sandbox)
    print(format_table(record))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    if args.feedback is not None:
        args.feedback.parent.mkdir(parents=True, exist_ok=True)
        args.feedback.write_text(feedback_markdown(record))
    return record


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
