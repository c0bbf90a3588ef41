"""The harness that runs inside the sandbox, and its completion-marker protocol.

The host hands the harness the program and a random per-run nonce through a pipe (never a
file, argument or environment variable the program could come across), and gives it a
second pipe for the marker. The harness sets the rlimits, runs the program's text as a
module (`__main__` only when asked: graded solutions never are), and writes the nonce to the
marker pipe only if the program's last line ran without raising. `sys.exit`, `os._exit`, a
signal or a crash before that leave no marker; output on stdout cannot stand in for it.
`from __future__` imports work because nothing is prepended to the program's text, so its
line numbers are its own (tracebacks name it `main.py`).
"""

from __future__ import annotations

import resource

from cegraph.sandbox.result import SandboxLimits

NONCE_BYTES = 16
PROGRAM_FILENAME = "main.py"

HARNESS = r"""
import os, resource, sys
def _harness():
    args = sys.argv[1:]
    control, marker, as_main = int(args[0]), int(args[1]), args[2] == "1"
    for pair in args[3:]:
        res, value = map(int, pair.split("="))
        resource.setrlimit(res, (value, value))
    os.set_inheritable(marker, False)
    chunks = []
    while chunk := os.read(control, 1 << 16):
        chunks.append(chunk)
    os.close(control)
    data = b"".join(chunks)
    nonce, source = data[:NONCE], data[NONCE:]
    import linecache, types
    name = "__main__" if as_main else "__cegraph_program__"
    module = types.ModuleType(name)
    module.__file__ = FILENAME
    sys.modules[name] = module
    text = source.decode("utf-8", "replace")
    linecache.cache[FILENAME] = (len(text), None, text.splitlines(True), FILENAME)
    sys.argv = [FILENAME]
    code = compile(source, FILENAME, "exec", dont_inherit=True)
    return marker, nonce, code, module
_marker, _nonce, _code, _module = _harness()
del _harness
exec(_code, _module.__dict__)
sys.stdout.flush()
os.write(_marker, _nonce)
""".replace("NONCE", str(NONCE_BYTES)).replace("FILENAME", repr(PROGRAM_FILENAME))


def harness_args(limits: SandboxLimits, control_fd: int, marker_fd: int,
                 as_main: bool) -> list[str]:
    """argv for `python -I -S -c HARNESS`: the fds, the mode and the rlimits to set."""
    mb = 1024 * 1024
    rlimits = {resource.RLIMIT_AS: limits.memory_mb * mb,
               resource.RLIMIT_CPU: int(limits.timeout_s) + 1,
               resource.RLIMIT_FSIZE: limits.max_file_mb * mb,
               resource.RLIMIT_CORE: 0,
               resource.RLIMIT_NOFILE: 256,
               resource.RLIMIT_NPROC: limits.max_processes}
    return [str(control_fd), str(marker_fd), "1" if as_main else "0",
            *(f"{res}={value}" for res, value in rlimits.items())]
