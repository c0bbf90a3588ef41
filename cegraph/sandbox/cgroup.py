"""A cgroup per run, where this process may create one: `pids.max` and a memory limit that
hold for the whole process tree, whatever route a process or a page was made by (fork,
`_posixsubprocess`, ctypes, threads; memfd, shared memory, tmpfs files, kernel objects).

Used when cgroup v2 has `pids` and `memory` enabled in a subtree this process may write to
(systemd delegation), or, as root, with cgroup v1's `pids` and `memory` hierarchies.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class _Layout:
    version: int
    parents: tuple[Path, ...]  # v2: one directory; v1: the pids and memory directories


def _own_paths() -> dict[str, str]:
    paths: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else ["unified"]:
            paths[c] = path
    return paths


def _writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def _find_layout() -> _Layout | None:
    try:
        own = _own_paths()
    except (OSError, ValueError):
        return None
    for mount in (_ROOT, _ROOT / "unified"):
        if "unified" in own and (mount / "cgroup.controllers").exists():
            here = mount / own["unified"].lstrip("/")
            with contextlib.suppress(OSError):
                enabled = (here / "cgroup.subtree_control").read_text().split()
                if {"pids", "memory"} <= set(enabled) and _writable(here):
                    return _Layout(2, (here,))
    if "pids" in own and "memory" in own:
        dirs = (_ROOT / "pids" / own["pids"].lstrip("/"),
                _ROOT / "memory" / own["memory"].lstrip("/"))
        if all(_writable(d) for d in dirs):
            return _Layout(1, dirs)
    return None


class RunCgroup:
    """One run's cgroup(s); `procs` are the files a process writes `0` to, to join."""

    def __init__(self, layout: _Layout, max_tasks: int, memory_bytes: int) -> None:
        name = f"cegraph-{os.getpid()}-{secrets.token_hex(4)}"
        self.version = layout.version
        self.dirs = [parent / name for parent in layout.parents]
        for d in self.dirs:
            d.mkdir()
        try:
            if self.version == 2:
                d = self.dirs[0]
                (d / "pids.max").write_text(str(max_tasks))
                (d / "memory.max").write_text(str(memory_bytes))
                with contextlib.suppress(OSError):
                    (d / "memory.swap.max").write_text("0")
            else:
                pids, memory = self.dirs
                (pids / "pids.max").write_text(str(max_tasks))
                (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
                with contextlib.suppress(OSError):
                    (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
        except OSError:
            self.close()
            raise
        self.procs = [str(d / "cgroup.procs") for d in self.dirs]

    def oom_killed(self) -> bool:
        """Whether the memory limit made the kernel kill a task of the run."""
        events = self.dirs[-1] / ("memory.events" if self.version == 2 else "memory.oom_control")
        with contextlib.suppress(OSError, ValueError):
            words = events.read_text().split()
            return int(words[words.index("oom_kill") + 1]) > 0
        return False

    def close(self) -> None:
        """Kill whatever is left in the cgroup and remove it (never raises)."""
        for d in self.dirs:
            with contextlib.suppress(OSError):
                (d / "cgroup.kill").write_text("1")
        for _ in range(100):
            left = False
            for d in self.dirs:
                with contextlib.suppress(OSError, ValueError):
                    for pid in (d / "cgroup.procs").read_text().split():
                        left = True
                        with contextlib.suppress(OSError):
                            os.kill(int(pid), signal.SIGKILL)
            if not left:
                break
            time.sleep(0.01)
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


_LAYOUT: tuple[_Layout | None] | None = None


def cgroup_layout() -> _Layout | None:
    """Where this process can make per-run cgroups (probed once), or None."""
    global _LAYOUT
    if _LAYOUT is None:
        layout = _find_layout()
        if layout is not None:
            try:
                RunCgroup(layout, 8, 64 << 20).close()
            except OSError:
                layout = None
        _LAYOUT = (layout,)
    return _LAYOUT[0]
