"""Runs untrusted Python (LLM-written programs, candidate solutions, grading tests).

Isolation is the kernel's (see `isolation.py`): bubblewrap namespaces, an unprivileged uid,
a seccomp filter, a read-only root with size-limited tmpfs where writes are needed, rlimits,
and a cgroup per process where one can be made (`cgroup.py`). The host never trusts what a
run leaves behind: it talks to a run only through pipes it created itself (stdin, stdout,
stderr, the run's input, the judge's verdict), never reads a file the run could have
replaced, and bounds every wait.

`run_python` runs a program; what it prints is its answer. `run_tests` grades a solution:
the solution runs in one sandboxed process (the callee), the tests in another (the judge,
see `harness.py`), and only plain data passes between them. Neither ever raises or hangs.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cegraph.sandbox.cgroup import RunCgroup, cgroup_layout
from cegraph.sandbox.harness import PROGRAM_FILENAME, TESTS_FILENAME
from cegraph.sandbox.isolation import (
    MODE_ENV,
    UNISOLATED,
    Mode,
    bwrap_argv,
    current_mode,
    interpreter,
    seccomp_filter,
)
from cegraph.sandbox.result import (
    Judgement,
    SandboxLimits,
    SandboxResult,
    SuiteResult,
    signal_name,
)
from cegraph.sandbox.runner import harness_argv

__all__ = ["MODE_ENV", "PROGRAM_FILENAME", "TESTS_FILENAME", "UNISOLATED", "SandboxLimits",
           "SandboxResult", "SuiteResult", "Judgement", "current_mode", "run_python",
           "run_tests", "signal_name"]

# bwrap's outer process, its PID-1 reaper and the harness count against pids.max too
_BWRAP_TASKS = 3
_EXIT_GRACE_S = 0.2
_REAP_S = 5.0
_VERDICT_BYTES = 1 << 20


def run_python(code: str, *, limits: SandboxLimits | None = None,
               stdin: str = "") -> SandboxResult:
    """Run `code` as a Python program (`__main__`) under the sandbox and capture its output.
    Its answer is what it printed: nothing it writes elsewhere is read."""
    limits = limits or SandboxLimits()
    mode = current_mode()
    if mode.isolation == "refused":
        return SandboxResult(False, "", "", None, isolation="refused", reason=mode.why)
    try:
        with _Session(mode, limits) as session:
            program = session.spawn("program", _utf8(code), stdin=_utf8(stdin))
            session.exchange(program)
            return session.result(program)
    except Exception as exc:  # a failed run is data for the caller, never a host crash
        return SandboxResult(False, "", "", None, isolation=mode.isolation,
                             reason=f"sandbox error: {type(exc).__name__}: {exc}")


def run_tests(solution: str, suites: Sequence[str], *, entry: str, prelude: str = "",
              limits: SandboxLimits | None = None) -> Judgement:
    """Run each test suite (Python source calling `entry`) against `solution`, in order,
    stopping at the first that fails. The suites run in the judge's process with `entry`
    bound to a proxy of the solution's function; `prelude` (trusted task text, e.g. a
    HumanEval prompt's helpers) runs in the judge before each suite. The solution's process
    never sees a suite."""
    limits = limits or SandboxLimits()
    mode = current_mode()
    if mode.isolation == "refused":
        return _failed("exception", mode.why)
    payload = json.dumps({"suites": list(suites), "prelude": prelude, "entry": entry})
    try:
        with _Session(mode, limits) as session:
            fds = session.fds
            requests_r, requests_w = fds.pipe()
            replies_r, replies_w = fds.pipe()
            verdict_r, verdict_w = fds.pipe()
            callee = session.spawn("callee", _utf8(solution), requests_fd=requests_r,
                                   replies_fd=replies_w)
            judge = session.spawn("judge", _utf8(payload), requests_fd=requests_w,
                                  replies_fd=replies_r, verdict_fd=verdict_w)
            for fd in (requests_r, requests_w, replies_r, replies_w, verdict_w):
                fds.close(fd)  # held by the two runs only: a closed end is a death seen
            verdict = session.sink(verdict_r, _VERDICT_BYTES, "the judge's verdict is too long")
            session.exchange(judge)
            return _judgement(session, session.result(judge), session.result(callee),
                              bytes(verdict))
    except Exception as exc:
        return _failed("exception", f"sandbox error: {type(exc).__name__}: {exc}")


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _failed(failure_class: str, message: str) -> Judgement:
    return Judgement((SuiteResult(False, failure_class, message),))


def _judgement(session: _Session, judge: SandboxResult, callee: SandboxResult,
               verdict: bytes) -> Judgement:
    """The judge's verdict on each suite it ran, as failure classes and messages."""
    if session.timed_out:
        return _failed("timeout", "timeout: the tests did not finish in "
                       f"{session.limits.timeout_s:g}s")
    if session.reason:
        return _failed("exception", session.reason)
    try:
        raw = json.loads(verdict)
    except ValueError:
        return _failed("exception", "the judge stopped without a verdict: "
                       f"{judge.error or 'no error'}")
    died = ("exception" if "Traceback" in callee.stderr or callee.reason else "early_exit")
    suites = []
    for entry in raw:
        kind, error = entry.get("kind"), entry.get("error", "")
        if entry.get("ok"):
            suites.append(SuiteResult(True))
        elif kind == "early_exit":
            suites.append(SuiteResult(False, died, callee.error if died == "exception" else
                                      "the solution's process ended before its tests finished "
                                      f"({callee.error or 'exit status 0'})"))
        else:
            # an assert the judge saw fail is a test failure; any other raise an exception
            failure = ("test_failure" if kind == "assert" and entry.get("assertion") else
                       "exception" if kind == "assert" else kind)
            suites.append(SuiteResult(False, failure, error, entry.get("assertion", "")))
    return Judgement(tuple(suites), judge=judge, callee=callee)


class _Fds:
    """Pipe ends this session owns; each closed exactly once."""

    def __init__(self) -> None:
        self.open: set[int] = set()

    def pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self.open |= {r, w}
        return r, w

    def close(self, fd: int) -> None:
        if fd in self.open:
            self.open.discard(fd)
            os.close(fd)

    def close_all(self) -> None:
        for fd in list(self.open):
            self.close(fd)


@dataclass
class _Sink:
    """Bytes read from one pipe: beyond `cap`, either the run stops with `overflow` as its
    reason, or (no `overflow`) only the last `cap` bytes are kept."""
    cap: int
    overflow: str = ""
    data: bytearray = field(default_factory=bytearray)


@dataclass
class _Proc:
    """One sandboxed interpreter of a session."""
    proc: subprocess.Popen
    out: _Sink
    err: _Sink
    cgroup: RunCgroup | None


class _Session:
    """One run's processes, pipes and cgroups, all released on exit (every process killed)."""

    def __init__(self, mode: Mode, limits: SandboxLimits) -> None:
        self.mode, self.limits = mode, limits
        self.stack = contextlib.ExitStack()
        self.fds = _Fds()
        self.stack.callback(self.fds.close_all)
        self.writes: dict[int, bytes] = {}
        self.sinks: dict[int, _Sink] = {}
        self.timed_out = False
        self.reason = ""
        self.cwd = "/"
        if mode.isolation != "bwrap":
            self.cwd = tempfile.mkdtemp(prefix="cegraph-sbx-")
            self.stack.callback(shutil.rmtree, self.cwd, ignore_errors=True)

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def sink(self, fd: int, cap: int, overflow: str = "") -> bytearray:
        self.sinks[fd] = sink = _Sink(cap, overflow)
        return sink.data

    def spawn(self, role: str, data: bytes, *, stdin: bytes = b"", requests_fd: int = -1,
              replies_fd: int = -1, verdict_fd: int = -1) -> _Proc:
        """Start one interpreter running `role` on `data` (sent through a pipe)."""
        fds, limits = self.fds, self.limits
        in_r, in_w = fds.pipe()
        out_r, out_w = fds.pipe()
        err_r, err_w = fds.pipe()
        ctl_r, ctl_w = fds.pipe()
        channel = [fd for fd in (requests_fd, replies_fd, verdict_fd) if fd >= 0]
        child_ends = [in_r, out_w, err_w, ctl_r]
        argv = [interpreter(), "-I", "-S",
                *harness_argv(role, limits, ctl_r, requests_fd=requests_fd,
                              replies_fd=replies_fd, verdict_fd=verdict_fd)]
        cgroup: RunCgroup | None = None
        if self.mode.isolation == "bwrap":
            sec_r, sec_w = fds.pipe()
            os.write(sec_w, seccomp_filter())  # a few hundred bytes: fits the pipe
            fds.close(sec_w)
            child_ends.append(sec_r)
            argv = bwrap_argv(str(self.mode.bwrap), limits.disk_mb << 20, sec_r) + argv
            if (layout := cgroup_layout()) is not None:
                cgroup = RunCgroup(layout, limits.max_processes + _BWRAP_TASKS,
                                   limits.memory_mb << 20)
                self.stack.callback(cgroup.close)
                # join before bwrap starts, so every process of the run is born inside
                argv = ["/bin/sh", "-c", 'echo 0 > "$1" && echo 0 > "$2" && shift 2 && '
                        'exec "$@"', "sh", cgroup.procs[0], cgroup.procs[-1], *argv]
        proc = subprocess.Popen(
            argv, stdin=in_r, stdout=out_w, stderr=err_w, pass_fds=child_ends[3:] + channel,
            cwd=self.cwd, env={"PATH": "/usr/bin:/bin", "HOME": self.cwd, "LANG": "C.UTF-8"},
            start_new_session=True)
        self.stack.callback(_reap, proc)
        for fd in child_ends:
            fds.close(fd)
        self.writes[in_w] = stdin
        self.writes[ctl_w] = data
        cap = limits.max_output_bytes
        out = _Sink(cap, f"Killed: output limit ({cap} bytes of stdout)")
        err = _Sink(cap)
        self.sinks[out_r], self.sinks[err_r] = out, err
        return _Proc(proc, out, err, cgroup)

    def exchange(self, primary: _Proc) -> None:
        """Feed the runs and collect their output until `primary` has exited (and a short
        grace for its pipes), the time is up, or a sink overflowed; non-blocking throughout."""
        pending = {fd: memoryview(data) for fd, data in self.writes.items()}
        sel = selectors.DefaultSelector()
        for fd in list(pending):
            if not pending[fd]:  # nothing to send: the run reads end of file at once
                del pending[fd]
                self.fds.close(fd)
                continue
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_WRITE)
        for fd in self.sinks:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + self.limits.timeout_s
        exited_at: float | None = None

        def done(fd: int) -> None:
            sel.unregister(fd)
            self.fds.close(fd)

        try:
            while sel.get_map() and not self.reason:
                now = time.monotonic()
                if exited_at is None and primary.proc.poll() is not None:
                    exited_at = now  # pipes still open now belong to other processes
                if exited_at is not None and now > exited_at + _EXIT_GRACE_S:
                    break
                if now >= deadline:
                    self.timed_out = True
                    break
                for key, _ in sel.select(min(deadline - now, 0.05)):
                    fd = key.fd
                    if fd in pending:
                        try:
                            sent = os.write(fd, pending[fd][:65536])
                        except BlockingIOError:
                            continue
                        except OSError:  # the run closed its end: it will not read the rest
                            sent = len(pending[fd])
                        pending[fd] = pending[fd][sent:]
                        if not pending[fd]:
                            done(fd)
                        continue
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        done(fd)
                        continue
                    sink = self.sinks[fd]
                    sink.data += chunk
                    if len(sink.data) > sink.cap:
                        if sink.overflow:
                            self.reason = sink.overflow
                            break
                        del sink.data[:-sink.cap]
        finally:
            sel.close()

    def result(self, run: _Proc) -> SandboxResult:
        """What one of the session's processes did (after `exchange`; kills it first)."""
        _reap(run.proc)
        returncode = run.proc.returncode
        if self.mode.isolation == "bwrap" and returncode is not None and returncode > 128:
            returncode = 128 - returncode  # bwrap reports a signal death as 128 + signal
        reason = self.reason
        if (not reason and run.cgroup is not None and returncode == -signal.SIGKILL
                and not self.timed_out and run.cgroup.oom_killed()):
            reason = ("MemoryError: the run exceeded its memory limit "
                      f"({self.limits.memory_mb} MB)")
        cap = self.limits.max_output_bytes
        return SandboxResult(
            ok=returncode == 0 and not self.timed_out and not reason,
            stdout=bytes(run.out.data[:cap]).decode("utf-8", "replace"),
            stderr=bytes(run.err.data[-cap:]).decode("utf-8", "replace"),
            returncode=returncode, timed_out=self.timed_out,
            isolation=self.mode.isolation, reason=reason)


def _reap(proc: subprocess.Popen) -> None:
    """Kill the run's process group (bwrap takes its PID namespace with it) and wait."""
    if proc.returncode is None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_REAP_S)
