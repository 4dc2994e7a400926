"""Write the student release of the course into a folder.

    python -m course.release OUT [--solved PART ...] [--skip-notebooks]

OUT receives a copy of the repository (the files git tracks, plus untracked ones it does not ignore) in which
  * every `### BEGIN SOLUTION` ... `### END SOLUTION` region of a .py file (the body of one function, listed in
    course/parts.py) becomes `raise PartNotWritten(<part>, <file>, <function>, <hint>)` (course/unwritten.py: a
    NotImplementedError, and a UserError, so that a lesson that reaches it stops with one line naming the part
    and where it lives), at the region's indentation;
  * every notebook with a marked region goes through nbgrader's own ClearSolutions preprocessor (the tool's
    pipeline, not a copy of it): the region becomes nbgrader's stub, `raise NotImplementedError()`, preceded by
    a comment with the exercise's hint; the outputs of the cells it changed are cleared;
  * everything else is copied unchanged, so the release imports and its untouched parts run.
--solved keeps the named parts' solutions (their markers removed): an instructor can hand out a partial release,
and the kit's tests build a release with exactly one part solved. nbgrader is optional (requirements-course.txt);
without it, --skip-notebooks leaves the marked notebooks out of OUT and says which.
"""
import argparse
import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python course/release.py` as well as `python -m course.release`
    sys.path.insert(0, str(REPO_ROOT))

from common.errors import UserError  # noqa: E402
from kernels.backend import COURSE_RELEASE_MARK  # noqa: E402
from course.parts import BEGIN_MARKER, END_MARKER, NOTEBOOK_EXERCISES, PARTS  # noqa: E402

STUB_IMPORT = "from course.unwritten import PartNotWritten  # the release's stub: replace these two lines"
HIDDEN_DIR = Path("course/hidden")  # instructor-only cases: never released
KIT_TESTS_DIR = Path("tests/course")  # the kit's own tests, which name the hidden cases: never released either
SKIPPED_DIRS = {".git", ".venv", ".venv-gpu", "venv", "data", "runs", "__pycache__", ".pytest_cache",
                ".ipynb_checkpoints"}


def repository_files(root: Path) -> list[Path]:
    """The files to release, relative to root: git's view (tracked + untracked not ignored) when root is a git
    checkout, else every file outside the usual build, data and environment folders."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                                capture_output=True, check=True).stdout.decode().split("\0")
        return sorted(Path(name) for name in listed if name and (root / name).is_file())
    except (OSError, subprocess.CalledProcessError):
        return sorted(path.relative_to(root) for path in root.rglob("*")
                      if path.is_file() and not SKIPPED_DIRS.intersection(path.relative_to(root).parts))


def marked_regions(source: str, filename: str) -> list[tuple[str, int, int]]:
    """(function qualname, begin line index, end line index) of each marked region of a Python source, the
    function being the innermost one whose body holds the markers."""
    lines = source.splitlines()
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN_MARKER]
    ends = [i for i, line in enumerate(lines) if line.strip() == END_MARKER]
    order = [kind for _, kind in sorted([(i, "B") for i in begins] + [(i, "E") for i in ends])]
    if "".join(order) != "BE" * len(begins):
        raise UserError(f"{filename}: unbalanced {BEGIN_MARKER!r} / {END_MARKER!r} markers: pair each BEGIN "
                        "with one END below it")
    functions = []  # (qualname, first line, last line), 0-based

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    functions.append((name, child.lineno - 1, child.end_lineno - 1))
                visit(child, name + ".")

    visit(ast.parse(source, filename=filename), "")
    regions = []
    for begin, end in zip(begins, ends):
        holders = [f for f in functions if f[1] < begin <= f[2]]  # END may follow the last statement
        if not holders:
            raise UserError(f"{filename}:{begin + 1}: a marked region outside any function: mark a function body")
        regions.append((max(holders, key=lambda f: f[1])[0], begin, end))
    return regions


def release_python(source: str, filename: str, hints: dict[str, tuple[str, str]], solved: set[str]) -> str:
    """The source with each marked body replaced by `raise PartNotWritten(...)` (after its import), or, for a solved part,
    with its markers dropped. hints: function qualname -> (part name, hint) for this file."""
    lines = source.splitlines(keepends=True)
    regions = marked_regions(source, filename)
    found = {function for function, _, _ in regions}
    for function in found - hints.keys():
        raise UserError(f"{filename}: the marked body of {function} belongs to no part: add a Part line for it "
                        "to course/parts.py or remove its markers")
    for function in hints.keys() - found:
        raise UserError(f"{filename}: course/parts.py lists {function} but its body is not marked: put "
                        f"{BEGIN_MARKER!r} / {END_MARKER!r} around it")
    for function, begin, end in reversed(regions):  # bottom-up: earlier line numbers stay valid
        part, hint = hints[function]
        if part in solved:
            lines[begin:end + 1] = lines[begin + 1:end]
        else:
            indent = lines[begin][:len(lines[begin]) - len(lines[begin].lstrip())]
            lines[begin:end + 1] = [f"{indent}{STUB_IMPORT}\n",
                                    f"{indent}raise PartNotWritten({part!r}, {filename!r}, {function!r}, {hint!r})\n"]
    return "".join(lines)


def release_notebook(path: Path, out_path: Path, hint: str) -> None:
    """nbgrader's ClearSolutions on one notebook (no nbgrader course database needed: the preprocessor alone)."""
    import nbformat
    from nbgrader.preprocessors import ClearSolutions

    nb = nbformat.read(path, as_version=4)
    before = [cell.source for cell in nb.cells]
    stub = f"# YOUR CODE HERE ({hint})\nraise NotImplementedError()"
    clear = ClearSolutions(enforce_metadata=False, code_stub=dict(python=stub))
    nb, _ = clear.preprocess(nb, {})
    changed = [cell for cell, old in zip(nb.cells, before) if cell.source != old]
    if not changed:
        raise UserError(f"{path.name}: course/parts.py lists a notebook exercise here but no cell is marked")
    for cell in changed:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, out_path)


def have_nbgrader() -> bool:
    try:
        import nbgrader.preprocessors  # noqa: F401
    except ImportError:
        return False
    return True


def release(out_dir: Path, *, solved=(), skip_notebooks: bool = False, root: Path = REPO_ROOT) -> list[str]:
    """Write the release into out_dir (new or empty). Returns the notebooks left out (with skip_notebooks)."""
    out_dir, root = Path(out_dir).resolve(), Path(root).resolve()
    solved = set(solved)
    unknown = solved - {part.name for part in PARTS}
    if unknown:
        raise UserError(f"--solved {', '.join(sorted(unknown))}: no such part; the parts are "
                        + ", ".join(part.name for part in PARTS))
    if out_dir == root or root in out_dir.parents:
        raise UserError(f"{out_dir}: the release must go outside the repository it is made from")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} is not empty: give a new folder for the release")
    exercises = {Path(exercise.notebook): exercise.hint for exercise in NOTEBOOK_EXERCISES}
    if exercises and not skip_notebooks and not have_nbgrader():
        raise UserError("the notebooks' exercises are released with nbgrader, which is not installed: "
                        "pip install -r requirements-course.txt, or pass --skip-notebooks to leave them out")
    hints = part_hints()
    files = [relative for relative in repository_files(root) if not is_hidden(relative)]
    for missing in sorted(set(hints) - set(files)):
        raise UserError(f"course/parts.py names {missing}, which is not in the repository")
    left_out = []
    for relative in files:
        source_path, out_path = root / relative, out_dir / relative
        if relative in exercises and skip_notebooks:
            left_out.append(str(relative))
            continue
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if relative in exercises:
            release_notebook(source_path, out_path, exercises[relative])
        elif relative.suffix == ".py" and relative.parts[0] != "course":
            source = source_path.read_text()
            file_hints = hints.get(relative, {})
            if file_hints or BEGIN_MARKER in source:
                source = release_python(source, str(relative), file_hints, solved)
            out_path.write_text(source)
        else:
            shutil.copy2(source_path, out_path)
    # The mark of a release: with it, --backend auto keeps the PyTorch twins on a CPU in 04 and 05 too
    # (kernels/backend.py), so that a lesson runs the student's own twin (occupancy_update), not the .cu.
    (out_dir / COURSE_RELEASE_MARK).write_text(json.dumps({"solved": sorted(solved)}) + "\n")
    check_no_hidden_tests(out_dir)
    return left_out


def part_hints() -> dict[Path, dict[str, tuple[str, str]]]:
    """file -> {function qualname -> (part name, hint)}, from course/parts.py."""
    hints: dict[Path, dict[str, tuple[str, str]]] = {}
    for part in PARTS:
        for region in part.regions:
            hints.setdefault(Path(region.file), {})[region.function] = (part.name, region.hint)
    return hints


def is_hidden(relative: Path) -> bool:
    """The instructor-only files: the hidden cases (course/hidden/) and the kit's tests (tests/course/)."""
    return relative.parts[:2] in (HIDDEN_DIR.parts, KIT_TESTS_DIR.parts)


def hidden_case_names() -> list[str]:
    from course.hidden.cases import HIDDEN

    return [case.name for case in HIDDEN]


def check_no_hidden_tests(out_dir: Path) -> None:
    """Refuse a release that holds the hidden tests: their folder, or any hidden case's name in any file (a copy
    of the file under another name, a notebook that pastes one). The release is deleted, not left half-leaked."""
    names = hidden_case_names()
    leaks = []
    if (out_dir / HIDDEN_DIR).exists():
        leaks.append(str(HIDDEN_DIR))
    for path in sorted(out_dir.rglob("*")):
        if path.is_file():
            text = path.read_bytes().decode("utf-8", "replace")
            leaks += [f"{path.relative_to(out_dir)} (names the hidden case {name})" for name in names if name in text][:1]
    if leaks:
        shutil.rmtree(out_dir)
        raise UserError(f"the release would leak the instructor-only tests: {leaks[0]}"
                        f"{f' and {len(leaks) - 1} more' if len(leaks) > 1 else ''}; remove them from the repository "
                        f"files outside {HIDDEN_DIR}/ (nothing was written)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder to write the release into (new or empty)")
    parser.add_argument("--solved", nargs="*", default=[], metavar="PART",
                        help="parts to hand out solved: " + ", ".join(part.name for part in PARTS))
    parser.add_argument("--skip-notebooks", action="store_true",
                        help="leave the notebooks with exercises out (when nbgrader is not installed)")
    args = parser.parse_args(argv)
    left_out = release(args.out, solved=args.solved, skip_notebooks=args.skip_notebooks)
    open_parts = [part.name for part in PARTS if part.name not in set(args.solved)]
    print(f"release written to {args.out}: parts to write: {', '.join(open_parts) or 'none'}")
    if left_out:
        print(f"left out (no nbgrader): {', '.join(left_out)}")


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
