"""Runs untrusted Python (LLM-written programs, candidate solutions, grading tests).

Isolation is the kernel's (see `isolation.py`): bubblewrap namespaces, an unprivileged uid,
a seccomp filter, tmpfs work directories, rlimits, and a per-run cgroup where one can be
made (`cgroup.py`). The host never trusts what the run leaves behind: it talks to the run
only through pipes it created itself (stdin, stdout, stderr, the program, the completion
marker), never reads a file the run could have replaced, and bounds every wait. Whatever
happens inside, `run_python` returns a `SandboxResult`; it never raises and never hangs.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import tempfile
import time

from cegraph.sandbox.cgroup import RunCgroup, cgroup_layout
from cegraph.sandbox.isolation import (
    MODE_ENV,
    UNISOLATED,
    Mode,
    bwrap_argv,
    current_mode,
    interpreter,
    seccomp_filter,
)
from cegraph.sandbox.result import SandboxLimits, SandboxResult, signal_name
from cegraph.sandbox.runner import HARNESS, NONCE_BYTES, PROGRAM_FILENAME, harness_args

__all__ = ["MODE_ENV", "PROGRAM_FILENAME", "UNISOLATED", "SandboxLimits", "SandboxResult",
           "current_mode", "run_python", "signal_name"]

# bwrap's outer process, its PID-1 reaper and the harness count against pids.max too
_BWRAP_TASKS = 3
_EXIT_GRACE_S = 0.2
_REAP_S = 5.0


def run_python(code: str, *, limits: SandboxLimits | None = None, stdin: str = "",
               as_main: bool = True) -> SandboxResult:
    """Run `code` as a Python program under the sandbox and capture its output.

    `as_main=False` (grading) runs it under another module name, so an
    `if __name__ == "__main__":` block does not run; `SandboxResult.completed` says whether
    its last line ran."""
    limits = limits or SandboxLimits()
    mode = current_mode()
    if mode.isolation == "refused":
        return SandboxResult(False, "", "", None, isolation="refused", reason=mode.why)
    try:
        return _run(code, limits, stdin, as_main, mode)
    except Exception as exc:  # a failed run is data for the caller, never a host crash
        return SandboxResult(False, "", "", None, isolation=mode.isolation,
                             reason=f"sandbox error: {type(exc).__name__}: {exc}")


class _Fds:
    """Pipe ends this run owns; each closed exactly once."""

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


def _run(code: str, limits: SandboxLimits, stdin: str, as_main: bool,
         mode: Mode) -> SandboxResult:
    nonce = secrets.token_bytes(NONCE_BYTES)
    with contextlib.ExitStack() as stack:
        fds = _Fds()
        stack.callback(fds.close_all)
        in_r, in_w = fds.pipe()
        out_r, out_w = fds.pipe()
        err_r, err_w = fds.pipe()
        ctl_r, ctl_w = fds.pipe()
        mark_r, mark_w = fds.pipe()
        child_ends = [in_r, out_w, err_w, ctl_r, mark_w]
        argv = [interpreter(), "-I", "-S", "-c", HARNESS,
                *harness_args(limits, ctl_r, mark_w, as_main)]
        cgroup: RunCgroup | None = None
        if mode.isolation == "bwrap":
            sec_r, sec_w = fds.pipe()
            os.write(sec_w, seccomp_filter())  # a few hundred bytes: fits the pipe
            fds.close(sec_w)
            child_ends.append(sec_r)
            argv = bwrap_argv(str(mode.bwrap), limits.disk_mb << 20, sec_r) + argv
            if (layout := cgroup_layout()) is not None:
                cgroup = RunCgroup(layout, limits.max_processes + _BWRAP_TASKS,
                                   limits.memory_mb << 20)
                stack.callback(cgroup.close)
                # join before bwrap starts, so every process of the run is born inside
                argv = ["/bin/sh", "-c", 'echo 0 > "$1" && echo 0 > "$2" && shift 2 && '
                        'exec "$@"', "sh", cgroup.procs[0], cgroup.procs[-1], *argv]
            cwd = "/"
        else:
            cwd = tempfile.mkdtemp(prefix="cegraph-sbx-")
            stack.callback(shutil.rmtree, cwd, ignore_errors=True)
        proc = subprocess.Popen(
            argv, stdin=in_r, stdout=out_w, stderr=err_w, pass_fds=child_ends[3:], cwd=cwd,
            env={"PATH": "/usr/bin:/bin", "HOME": cwd, "LANG": "C.UTF-8"},
            start_new_session=True)
        stack.callback(_reap, proc)
        for fd in child_ends:
            fds.close(fd)
        io = _exchange(proc, fds, {in_w: stdin.encode("utf-8", "surrogatepass"),
                                   ctl_w: nonce + code.encode("utf-8", "surrogatepass")},
                       out_r, err_r, mark_r, limits)
        _reap(proc)
        returncode = proc.returncode
        if mode.isolation == "bwrap" and returncode is not None and returncode > 128:
            returncode = 128 - returncode  # bwrap reports a signal death as 128 + signal
        reason = io.reason
        if (not reason and cgroup is not None and returncode == -signal.SIGKILL
                and not io.timed_out and cgroup.oom_killed()):
            reason = f"MemoryError: the run exceeded its memory limit ({limits.memory_mb} MB)"
    cap = limits.max_output_bytes
    return SandboxResult(
        ok=returncode == 0 and not io.timed_out and not reason,
        stdout=bytes(io.out[:cap]).decode("utf-8", "replace"),
        stderr=bytes(io.err[-cap:]).decode("utf-8", "replace"),
        returncode=returncode, timed_out=io.timed_out, isolation=mode.isolation,
        completed=bytes(io.marker) == nonce, reason=reason)


class _Exchange:
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.marker = bytearray()
        self.timed_out = False
        self.reason = ""


def _exchange(proc: subprocess.Popen, fds: _Fds, writes: dict[int, bytes], out_r: int,
              err_r: int, mark_r: int, limits: SandboxLimits) -> _Exchange:
    """Feed the run and collect its output until every pipe is closed, the run's time is
    up, or it printed too much; non-blocking throughout."""
    io = _Exchange()
    cap = limits.max_output_bytes
    sinks = {out_r: io.out, err_r: io.err, mark_r: io.marker}
    pending = {fd: memoryview(data) for fd, data in writes.items()}
    sel = selectors.DefaultSelector()
    for fd in pending:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_WRITE)
    for fd in sinks:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + limits.timeout_s
    exited_at: float | None = None

    def done(fd: int) -> None:
        sel.unregister(fd)
        fds.close(fd)

    try:
        while sel.get_map():
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now  # pipes still open now belong to stray processes
            if exited_at is not None and now > exited_at + _EXIT_GRACE_S:
                break
            if now >= deadline:
                io.timed_out = True
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
                sink = sinks[fd]
                sink += chunk
                if fd == mark_r:
                    del sink[NONCE_BYTES + 1:]
                elif fd == out_r and len(sink) > cap:
                    io.reason = f"Killed: output limit ({cap} bytes of stdout)"
                elif fd == err_r and len(sink) > 2 * cap:
                    del sink[:-cap]
            if io.reason:
                break
    finally:
        sel.close()
    return io


def _reap(proc: subprocess.Popen) -> None:
    """Kill the run's process group (bwrap takes its PID namespace with it) and wait."""
    if proc.returncode is None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_REAP_S)
