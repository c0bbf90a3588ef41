"""Runs untrusted Python (LLM-written programs, candidate solutions, grading tests).

Each run is a fresh `python -I` subprocess in a temporary directory with:
- a wall-clock timeout (the whole process group is killed),
- rlimits: CPU seconds, address space (memory), file size (caps output), process count,
- no network: a new, empty network namespace when the OS allows it (root or user
  namespaces); where it does not, an audit hook inside the child refuses sockets,
  `os.system`, `subprocess` and `exec*` (weaker: documented in the README),
- when started as root and the interpreter is reachable by others, the child drops to the
  `nobody` user so that the process-count limit (which root ignores) stops a fork bomb;
  otherwise the audit hook's refusal of `os.fork`/`subprocess` and of `ctypes` symbol
  lookups is what stops it.
A sandbox failure is returned as data (`SandboxResult`), never raised.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Prepended to every program: refuses process creation and network use even where the
# namespace could not be created. Audit hooks cannot be removed once installed.
_GUARD = '''
import sys as _sys
def _cegraph_guard(event, args):
    if event in ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
                 "os.fork", "os.forkpty", "socket.connect", "socket.bind", "socket.sendto",
                 "socket.getaddrinfo", "ctypes.dlsym", "ctypes.dlopen"):
        raise PermissionError(f"sandbox: {event} is not allowed")
_sys.addaudithook(_cegraph_guard)
del _cegraph_guard
'''
#: Lines the sandbox puts before the user's program (to map traceback line numbers back).
PRELUDE_LINES = _GUARD.count("\n")


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    memory_mb: int = 1024
    max_output_bytes: int = 64 * 1024
    max_processes: int = 64


@dataclass(frozen=True)
class SandboxResult:
    ok: bool
    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool = False
    network_isolated: bool = False

    @property
    def error(self) -> str:
        """One line naming why the run failed: timeout, the exception, or the signal."""
        if self.timed_out:
            return "Timeout: program exceeded its time limit"
        lines = [ln for ln in self.stderr.strip().splitlines() if ln.strip()]
        for line in reversed(lines):
            if not line.startswith((" ", "\t", "Traceback")):
                return line.strip()
        if self.returncode is not None and self.returncode < 0:
            name = signal.Signals(-self.returncode).name
            return f"Killed: {name}" + (" (output limit)" if name == "SIGXFSZ" else "")
        return f"exit status {self.returncode}" if not self.ok else ""


def _world_executable(path: Path) -> bool:
    """Whether an unprivileged user can run `path` (every parent must be searchable)."""
    path = path.resolve()
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


# The child's first program. It runs after exec, not between fork and exec, so nothing it
# does can deadlock on a lock another thread of the (threaded) parent held at fork time:
# network namespace, rlimits, unprivileged user, then exec of the real program.
_BOOTSTRAP = """
import ctypes, os, resource, sys
mem, cpu, fsize, nproc, drop, program = sys.argv[1:]
ctypes.CDLL(None, use_errno=True).unshare(0x40000000)  # best effort; the guard remains
for res, value in ((resource.RLIMIT_AS, int(mem)), (resource.RLIMIT_CPU, int(cpu)),
                   (resource.RLIMIT_FSIZE, int(fsize)), (resource.RLIMIT_CORE, 0),
                   (resource.RLIMIT_NPROC, int(nproc))):
    resource.setrlimit(res, (value, value))
if drop == "1":
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
os.execv(sys.executable, [sys.executable, "-I", "-S", program])
"""


def network_namespace_available() -> bool:
    """Whether this process may create a network namespace for its children."""
    probe = subprocess.run(
        [sys.executable, "-c", "import ctypes,sys;"
         "sys.exit(ctypes.CDLL(None,use_errno=True).unshare(0x40000000)!=0)"],
        capture_output=True, check=False)
    return probe.returncode == 0


_NETNS: bool | None = None


def run_python(code: str, *, limits: SandboxLimits | None = None, stdin: str = "") -> SandboxResult:
    """Run `code` as a Python program under the sandbox and capture its output."""
    global _NETNS
    limits = limits or SandboxLimits()
    if _NETNS is None:
        _NETNS = network_namespace_available()
    with tempfile.TemporaryDirectory(prefix="cegraph-sbx-") as tmp:
        work = Path(tmp)
        drop = os.geteuid() == 0 and _world_executable(Path(sys.executable))
        if drop:
            os.chmod(work, 0o777)
        program = work / "main.py"
        program.write_text(_GUARD + code, encoding="utf-8")
        out_path, err_path = work / "stdout", work / "stderr"
        env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
               "HOME": str(work), "LANG": "C.UTF-8"}
        with out_path.open("wb") as out, err_path.open("wb") as err:
            argv = [str(limits.memory_mb * 1024 * 1024), str(int(limits.timeout_s) + 1),
                    str(limits.max_output_bytes), str(limits.max_processes), str(int(drop)),
                    str(program)]
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, *argv], cwd=work, env=env,
                stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True,
                close_fds=True)
            timed_out = False
            try:
                proc.communicate(stdin.encode(), timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        cap = limits.max_output_bytes
        stdout = out_path.read_bytes()[:cap].decode("utf-8", "replace")
        stderr = err_path.read_bytes()[-cap:].decode("utf-8", "replace")
    return SandboxResult(ok=proc.returncode == 0 and not timed_out, stdout=stdout,
                         stderr=stderr, returncode=proc.returncode, timed_out=timed_out,
                         network_isolated=_NETNS)
