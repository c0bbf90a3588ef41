"""How the host starts the in-sandbox harness (`harness.py`): its command line.

The harness's text travels as the `-c` argument (it holds no secret); a run's input (the
program, the solution, the tests) travels through a pipe, so it is in no file, argument or
environment variable of the run.
"""

from __future__ import annotations

import resource
from functools import cache
from pathlib import Path

from cegraph.sandbox.result import SandboxLimits

ROLES = ("program", "callee", "judge")


@cache
def harness_source() -> str:
    return Path(__file__).with_name("harness.py").read_text(encoding="utf-8")


def harness_argv(role: str, limits: SandboxLimits, control_fd: int, *, requests_fd: int = -1,
                 replies_fd: int = -1, verdict_fd: int = -1) -> list[str]:
    """`-c HARNESS` and its argv: the role, the fds it uses and the rlimits to set."""
    assert role in ROLES
    mb = 1024 * 1024
    rlimits = {resource.RLIMIT_AS: limits.memory_mb * mb,
               resource.RLIMIT_CPU: int(limits.timeout_s) + 1,
               resource.RLIMIT_FSIZE: limits.max_file_mb * mb,
               resource.RLIMIT_CORE: 0,
               resource.RLIMIT_NOFILE: 256,
               resource.RLIMIT_NPROC: limits.max_processes}
    return ["-c", harness_source(), role, str(control_fd), str(requests_fd), str(replies_fd),
            str(verdict_fd), *(f"{res}={value}" for res, value in rlimits.items())]
