"""What a part left blank raises in the student's release (course/release.py writes the stub).

PartNotWritten is a NotImplementedError, so a test that expects the blank stub still sees one, and a UserError, so
a lesson run through common.cli.run_main (every numbered script's `__main__`) stops with one line naming the part
and where it lives, exit status 2, instead of a traceback from deep inside the lesson.
"""
from common.errors import UserError


class PartNotWritten(UserError, NotImplementedError):
    def __init__(self, part: str, file: str, function: str, hint: str):
        self.part, self.file, self.function, self.hint = part, file, function, hint
        super().__init__(f"{part}: not written yet: it is the body of {function}() in {file} ({hint}); write it "
                         f"there, or ask for a release with it solved (python -m course.release OUT --solved {part})")
