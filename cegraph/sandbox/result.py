"""What a sandboxed run may use (`SandboxLimits`), what a process produced (`SandboxResult`),
and what the judge observed testing a solution (`Judgement`)."""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    #: per-process address space (RLIMIT_AS) and, with a cgroup, the whole run's memory
    memory_mb: int = 1024
    #: stdout beyond this kills the run; stderr keeps its last bytes of this size
    max_output_bytes: int = 64 * 1024
    #: processes + threads of the whole run
    max_processes: int = 64
    #: size of each writable tmpfs (the work directory and /dev/shm; the root is read-only)
    disk_mb: int = 64
    #: largest file the run may write (RLIMIT_FSIZE)
    max_file_mb: int = 16


def signal_name(number: int) -> str:
    """`SIGKILL`, `SIGRTMIN+2`, or `signal 99`: never raises for numbers `Signals` lacks."""
    try:
        return signal.Signals(number).name
    except ValueError:
        if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
            return f"SIGRTMIN+{number - signal.SIGRTMIN}"
        return f"signal {number}"


@dataclass(frozen=True)
class SandboxResult:
    ok: bool
    stdout: str
    stderr: str
    #: the program's exit status; negative: killed by that signal; None: it never started
    returncode: int | None
    timed_out: bool = False
    #: "bwrap" (kernel isolation), "unisolated" (the opt-in weaker mode) or "refused"
    isolation: str = "bwrap"
    #: why the host stopped or refused the run (output limit, no isolation, internal error)
    reason: str = ""

    @property
    def error(self) -> str:
        """One line naming why the run failed: the host's reason, timeout, the exception,
        or the signal."""
        if self.reason:
            return self.reason
        if self.timed_out:
            return "Timeout: program exceeded its time limit"
        lines = [ln for ln in self.stderr.strip().splitlines() if ln.strip()]
        for line in reversed(lines):
            if not line.startswith((" ", "\t", "Traceback")):
                return line.strip()
        if self.returncode is not None and self.returncode < 0:
            name = signal_name(-self.returncode)
            return f"Killed: {name}" + (" (file size limit)" if name == "SIGXFSZ" else "")
        return f"exit status {self.returncode}" if not self.ok else ""


@dataclass(frozen=True)
class SuiteResult:
    """The judge's verdict on one test suite: passed, or why not. `failure_class` is one of
    test_failure (an assert failed; `line` is its line in the suite), exception (the
    solution or the test raised), early_exit (the solution's process ended before the tests
    did), bad_return (it answered with something other than plain data), timeout.
    `assertion` is the suite's assert (on one line) in which the failure surfaced, if any."""
    passed: bool
    failure_class: str | None = None
    message: str = ""
    assertion: str = ""


@dataclass(frozen=True)
class Judgement:
    """The suites the judge ran, in order; it stops at the first that fails, so the last one
    is the failure (if any). `judge`/`callee` are the two processes, when they ran."""
    suites: tuple[SuiteResult, ...]
    judge: SandboxResult | None = None
    callee: SandboxResult | None = None

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.suites)
