"""Hostile programs end as recorded failures and the host survives."""

import os

import pytest

from cegraph.sandbox import SandboxLimits, network_namespace_available, run_python

FAST = SandboxLimits(timeout_s=3)


def test_normal_program_runs():
    r = run_python("print(sum(range(10)))", limits=FAST)
    assert r.ok and r.stdout.strip() == "45"


def test_infinite_loop_times_out():
    r = run_python("while True:\n    pass", limits=FAST)
    assert not r.ok and r.timed_out and r.error.startswith("Timeout")


def test_fork_bomb_is_contained():
    r = run_python("import os\nwhile True:\n    os.fork()", limits=FAST)
    assert not r.ok
    assert os.getpid() > 0 and run_python("print(1)", limits=FAST).ok  # host still works


def test_shell_and_network_are_refused():
    r = run_python("import os\nos.system('curl -s -m 2 http://1.1.1.1')", limits=FAST)
    assert not r.ok and "os.system" in r.error
    r = run_python("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)",
                   limits=FAST)
    assert not r.ok and ("PermissionError" in r.error or "unreachable" in r.error.lower())
    r = run_python("import subprocess\nsubprocess.run(['true'])", limits=FAST)
    assert not r.ok and "PermissionError" in r.error


def test_network_namespace_when_available(tmp_path):
    r = run_python("print('x')", limits=FAST)
    assert r.network_isolated == network_namespace_available()
    if not r.network_isolated:
        pytest.skip("this OS refuses network namespaces; the audit hook is the only guard")
    # without the audit hook, the namespace alone must leave no route out
    import subprocess
    import sys

    from cegraph.sandbox import _BOOTSTRAP

    probe = tmp_path / "probe.py"
    probe.write_text("import socket\ns = socket.socket()\ns.settimeout(2)\n"
                     "print(s.connect_ex(('1.1.1.1', 80)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", _BOOTSTRAP, str(2**30), "5",
                          "65536", "64", "0", str(probe)], capture_output=True, text=True)
    assert out.stdout.strip() == "101"  # ENETUNREACH: an empty namespace


def test_huge_allocation_is_a_memory_error():
    r = run_python("x = bytearray(10 * 1024 ** 3)", limits=FAST)
    assert not r.ok and "MemoryError" in r.error


def test_output_is_capped():
    limits = SandboxLimits(timeout_s=3, max_output_bytes=4096)
    r = run_python("while True:\n    print('x' * 1000)", limits=limits)
    assert not r.ok and len(r.stdout) <= 4096


def test_exception_type_is_reported():
    r = run_python("def f():\n    return {}['k']\nf()", limits=FAST)
    assert r.error == "KeyError: 'k'"
