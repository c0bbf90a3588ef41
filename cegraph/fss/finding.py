"""A failure's dominant finding: the one typed fact, of the step checker and the contrast
with a right path, that says best what kind of error it is; the words a signature is
embedded from under the `steps` recipes and the words a mode is named with.

The order is from the most to the least specific evidence: a cut-off run and code whose
claimed output is not what it prints are certain; a stated step that recomputes differently
is an arithmetic slip; another operation on the right path's operands is a wrong operation;
a unit or percent factor the question cues comes next; then a reported number that is not
the run's own last result (extraction), a run that stopped on the right path, and a run
that took another number or never computed what the right path needs (a misreading).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cegraph.fss.contrast import CodeContrast, Contrast, contrast_code, contrast_digest
from cegraph.fss.features import RunDigest
from cegraph.fss.steps import FINDINGS, StepCheck, check_digest

#: Step findings that outrank any contrast (certain evidence of their kind).
CERTAIN = ("cut_at_limit", "invented_output", "arithmetic_error")
#: Step findings that a contrast outranks.
WEAK = ("unit_or_percent", "answer_not_last_result")


#: What a signature embeds for a finding with particulars (`operation:<right>:<used>`,
#: `raises:<exception>`, `type:<expected>:<got>`, `size:<type>`): one kind of error
#: whichever the particulars; the mode's words name them (`mode_kind`).
OPERATION = "applied another operation to the numbers of the right path"
GENERIC = {"operation": OPERATION, "raises": "raises an exception on a test input",
           "type": "returns another type of value than the tests expect",
           "size": "returns a value of another length than the tests expect"}


@dataclass(frozen=True)
class Finding:
    """A failure's dominant finding: a key (`arithmetic_error`, `operation:*:+`,
    `missing_step`, ...) and the words for it."""

    key: str
    words: str

    @property
    def embedded(self) -> str:
        """The words a signature embeds: the kind of error, without its particulars."""
        return GENERIC.get(self.key.split(":", 1)[0], self.words)


@dataclass(frozen=True)
class Reading:
    """What the deterministic checks read from one failed run: the step check, and the
    contrast with a right path where one is known."""

    steps: StepCheck
    contrast: Contrast | CodeContrast | None = None

    def finding(self, *, contrast: bool = True) -> Finding | None:
        """The dominant finding (None when nothing holds); `contrast=False` ignores the
        right path (the `steps` recipe)."""
        held = set(self.steps.findings)
        c = self.contrast if contrast else None
        for key in CERTAIN:
            if key in held:
                return Finding(key, FINDINGS[key])
        if c is not None and c.kind.startswith("operation:"):
            return Finding(c.kind, c.text)
        for key in WEAK:
            if key in held:
                return Finding(key, FINDINGS[key])
        if c is not None:
            return Finding(c.kind, c.text)
        rest = self.steps.finding
        return Finding(rest, FINDINGS[rest]) if rest else None


def mode_kind(failure_ids: Sequence[str], findings: Mapping[str, Finding]) -> str | None:
    """A mode's kind in words from its members' dominant findings: the most common one and
    how many runs have it (`adds where it should multiply, 6 runs`); None when no member
    has a finding."""
    held = [findings[i] for i in failure_ids if i in findings]
    if not held:
        return None
    (key, words), count = Counter((f.key, f.words) for f in held).most_common(1)[0]
    share = "" if count == len(failure_ids) else f" of {len(failure_ids)}"
    return f"{words}, {count}{share} run{'s' if count != 1 or share else ''}"


def read_failures(digests: Mapping[str, RunDigest], solutions: Mapping[str, str], *,
                  stored: Mapping[str, Sequence[str]] | None = None,
                  run: Callable[[str], tuple[str, str]] | None = None,
                  tests: Mapping[str, Sequence[str]] | None = None) -> dict[str, Reading]:
    """The reading of each failure by id: its step findings as stored (`stored`, the
    `failures.step_findings` column) or checked now (running code with `run`), and its
    contrast with the right solution of its task where `solutions` has one (code: with its
    task's `tests`, assert lines by task id)."""
    stored = stored or {}
    tests = tests or {}
    out = {}
    for fid, d in digests.items():
        check = (StepCheck(findings=tuple(stored[fid])) if fid in stored
                 else check_digest(d, run=run))
        out[fid] = Reading(check, contrast_digest(d, solutions.get(d.task_id, ""))
                           or contrast_code(d, run=run, tests=tests.get(d.task_id, ())))
    return out
