"""Wrong solutions that used to fool grading (issue 21), each on a packaged HumanEval and MBPP
task: the tests run in a judge process, the solution in another, and only plain data
passes between them, so none of these tricks can make a wrong solution pass."""

from __future__ import annotations

import secrets

import pytest

from cegraph.benchmarks import load
from cegraph.evaluators import grade_code
from cegraph.operators.test import run_public_tests
from cegraph.sandbox import SandboxLimits, current_mode
from cegraph.task import Task

FAST = SandboxLimits(timeout_s=5, max_processes=16, memory_mb=256)
TASKS = [load("humaneval", n=1, seed=0)[0], load("mbpp", n=1, seed=0)[0]]


@pytest.fixture(scope="module", autouse=True)
def isolation_is_on() -> None:
    mode = current_mode()
    assert mode.isolation == "bwrap", mode.why


def _wrong(task: Task, body: str, prelude: str = "") -> str:
    """A solution defining the task's function as `body` (which may use `prelude`)."""
    return f"{prelude}\ndef {task.entry_point}(*args, **kwargs):\n    {body}\n"


def _fails(task: Task, solution: str) -> str:
    """Assert that grading and the public tests both fail `solution`; its failure class."""
    outcome = grade_code(task, solution, FAST)
    assert not outcome.passed and outcome.score_all == 0.0, outcome
    passed, _ = run_public_tests(solution, task.entry_point or "", list(task.public_tests), FAST)
    assert not passed
    return outcome.failure_class or ""


# (a) read the completion nonce and marker pipe from the harness, claim completion, exit
_CLAIM = '''
import os, sys, threading, time
def _claim():
    spaces = [sys.modules['__main__'].__dict__]
    frame = sys._getframe(1)
    while frame is not None:
        spaces += [frame.f_globals, frame.f_locals]
        frame = frame.f_back
    secret = b'0' * 16
    for space in spaces:
        for value in list(space.values()):
            if isinstance(value, bytes) and len(value) == 16:
                secret = value
    for fd in range(3, 256):
        try:
            os.write(fd, secret)
        except OSError:
            pass
    os._exit(0)
'''


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.dataset)
@pytest.mark.parametrize("when", ["import", "call", "thread"])
def test_claiming_completion_and_exiting_early_fails(task, when):
    if when == "import":
        solution = _wrong(task, "return None", _CLAIM + "_claim()\n")
    elif when == "call":
        solution = _wrong(task, "_claim()", _CLAIM)
    else:  # a daemon thread claims while the function keeps the tests waiting
        solution = _wrong(task, "time.sleep(3)", _CLAIM + "threading.Thread(target=lambda: ("
                          "time.sleep(0.3), _claim()), daemon=True).start()\n")
    assert _fails(task, solution) == "early_exit"


# (b) an object equal to everything; (c) the same with the builtins the tests use patched
_ALWAYS_EQUAL = '''
class _Equal:
    __eq__ = lambda self, other: True
    __ne__ = lambda self, other: False
    __lt__ = __le__ = __gt__ = __ge__ = __eq__
    __hash__ = lambda self: 0
    __abs__ = __neg__ = lambda self: self
    __sub__ = __add__ = __mul__ = __truediv__ = lambda self, other: self
    __rsub__ = __radd__ = __rmul__ = __rtruediv__ = __sub__
    __bool__ = lambda self: True
    __len__ = lambda self: 0
    __iter__ = lambda self: iter(())
    __float__ = lambda self: 0.0
'''
_PATCHED = '''
import builtins, math
builtins.abs = lambda x: 0
builtins.isinstance = lambda *a: True
builtins.sorted = lambda *a, **k: _Equal()
builtins.set = lambda *a: _Equal()
math.isclose = lambda *a, **k: True
'''


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.dataset)
@pytest.mark.parametrize("patched", [False, True], ids=["plain", "patched-builtins"])
def test_an_object_equal_to_everything_fails(task, patched):
    solution = _wrong(task, "return _Equal()", _ALWAYS_EQUAL + (_PATCHED if patched else ""))
    # patched builtins may break the solution's own process before it answers: its loss
    assert _fails(task, solution) in (("bad_return", "exception") if patched else
                                      ("bad_return",))


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.dataset)
def test_a_plain_type_with_its_own_equality_is_compared_as_plain_data(task):
    prelude = "class _L(list):\n    __eq__ = lambda self, other: True\n"
    assert _fails(task, _wrong(task, "return _L()", prelude)) == "test_failure"


# (d) read the hidden asserts back (linecache, the harness's compiled code, any object)
_READ_BACK = '''
import gc, linecache, os, re, sys
def _texts():
    for entry in list(linecache.cache.values()):
        yield ''.join(entry[2])
    for obj in gc.get_objects():
        if type(obj).__name__ == 'code':
            yield repr(obj.co_consts)
        elif isinstance(obj, dict):
            yield ' '.join(map(repr, obj.values()))
    frame = sys._getframe()
    while frame is not None:
        yield repr(frame.f_globals) + repr(frame.f_locals)
        for value in [*frame.f_globals.values(), *frame.f_locals.values()]:
            if isinstance(value, (str, bytes)):
                yield value if isinstance(value, str) else value.decode('utf-8', 'replace')
        frame = frame.f_back
    yield repr(sys.argv) + repr(dict(os.environ))
    for path in ['/proc/self/cmdline', '/proc/1/cmdline'] + [
            os.path.join(d, f) for d in ('/tmp', '.') for f in os.listdir(d)]:
        try:
            with open(path, 'rb') as fh:
                yield fh.read().decode('utf-8', 'replace')
        except OSError:
            pass
def _answer(name, args):
    call = '(?:' + name + '|candidate)' + re.escape('(' + ', '.join(map(repr, args)) + ')')
    for text in _texts():
        for m in re.finditer(call + r'\\s*==\\s*(.+)', text):
            try:
                return eval(m.group(1).strip().rstrip(')'))
            except Exception:
                pass
    return None
'''


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.dataset)
def test_reading_the_hidden_asserts_back_fails(task):
    solution = _wrong(task, f"return _answer({task.entry_point!r}, args)", _READ_BACK)
    assert _fails(task, solution) in ("test_failure", "exception")


def test_the_hidden_tests_text_never_reaches_the_solution():
    token = secrets.token_hex(16)
    task = Task("spy", "mbpp", "", f"assert spy() == {token!r}", metadata={"entry_point": "spy"})
    spy = _READ_BACK + (
        "def spy():\n    for text in _texts():\n"
        "        if (m := re.search(r\"spy\\(\\) == '([0-9a-f]{32})'\", text)):\n"
        "            return m.group(1)\n")
    outcome = grade_code(task, spy, FAST)
    assert not outcome.passed and outcome.failure_class == "test_failure"
    # the same search finds the token when it is in the solution's own text
    assert grade_code(task, spy + f"# spy() == {token!r}\n", FAST).passed


# equality is decided in the judge, on plain data, strict about bools
def test_true_is_not_one_and_floats_compare_as_the_dataset_says():
    task = Task("eq", "mbpp", "", "assert f(0) == True\nassert f(1) != 0\nassert f(2) == 0.5",
                metadata={"entry_point": "f"})
    assert grade_code(task, "def f(x):\n    return [True, False, 0.5][x]\n", FAST).passed
    ints = grade_code(task, "def f(x):\n    return [1, 0, 0.5][x]\n", FAST)
    assert not ints.passed and ints.message == "AssertionError: assert f(0) == True"
    close = grade_code(task, "def f(x):\n    return [True, False, 0.5000001][x]\n", FAST)
    assert not close.passed and close.message == "AssertionError: assert f(2) == 0.5"


def test_a_solution_raising_is_an_exception_the_test_can_expect():
    task = Task("raise", "mbpp", "", "try:\n    f(-1)\n    assert False\nexcept ValueError:\n"
                "    pass\nassert f(2) == {2: (b'x', 2j, frozenset({1}))}",
                metadata={"entry_point": "f"})
    right = ("def f(x):\n    if x < 0:\n        raise ValueError('negative')\n"
             "    return {x: (b'x', 2j, frozenset({1}))}\n")
    assert grade_code(task, right, FAST).passed
    wrong = grade_code(task, "def f(x):\n    raise KeyError('k')\n", FAST)
    assert not wrong.passed and wrong.failure_class == "exception"
    assert wrong.message.startswith("KeyError")


def test_the_unisolated_mode_grades_through_the_same_judge(monkeypatch):
    monkeypatch.setenv("CEGRAPH_SANDBOX", "unisolated")
    task = Task("u", "mbpp", "", "assert add(1, 2) == 3\nassert add(2, 2) == 4",
                public_tests=("assert candidate(1, 2) == 3",), metadata={"entry_point": "add"})
    assert grade_code(task, "def add(a, b):\n    return a + b\n", FAST).passed
    assert _fails(task, _wrong(task, "_claim()", _CLAIM)) == "early_exit"
