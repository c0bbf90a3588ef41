"""The code that runs inside the sandbox: `python -I -S -c <this file's text> ROLE ...`.

Standard library only, and no `from __future__` (the host sends this text as it is). The
host hands each run its input through a pipe it created (never a file, argument or
environment variable), and the run sets its own rlimits before reading it. One of three
roles, named by the host:

- `program`: runs a program's text as `__main__`; what it prints is its answer (Programmer).
- `callee`: loads a solution as a module (never `__main__`) and answers calls to its
  functions on a channel of two pipes; it never sees a test.
- `judge`: runs a task's tests in its own interpreter, with the function under test bound
  to a proxy that calls the callee; it writes its verdict to a pipe only it holds.

The channel carries one JSON line per message, and only plain data (`encode`/`decode`):
None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset, nested.
The judge decodes every reply itself, so nothing the solution made (an object with its own
`__eq__`, a patched builtin) ever runs in the judge; whether the tests finished is what the
judge saw, not something the solution can claim.
"""

import builtins
import io
import os
import resource
import sys
import types

# json, ast and traceback are imported where they are used: a plain program (most runs)
# starts without them (tens of ms on a busy host)

PROGRAM_FILENAME = "main.py"
TESTS_FILENAME = "tests.py"
#: the largest message either side reads; a longer reply is a bad return
MAX_MESSAGE = 16 << 20
_EQ = "_cegraph_strict_eq"


# --- the codec: plain data only, both ways -------------------------------------------------

def encode(value: object) -> object:
    """`value` as JSON-ready data with type tags; TypeError for anything not plain data.

    A subclass of a plain type (`Counter`, `OrderedDict`, a namedtuple, an `IntEnum`) goes
    as its plain base: this runs in the solution's process, so it decides nothing; what the
    judge decodes is plain, whatever was sent."""
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is bytes:
        return ["bytes", value.hex()]
    if kind is complex:
        return ["complex", value.real, value.imag]
    for base in (dict, list, tuple, set, frozenset):
        if isinstance(value, base):
            if base is dict:
                return ["dict", *([encode(k), encode(v)] for k, v in dict.items(value))]
            return [base.__name__, *(encode(item) for item in base.__iter__(value))]
    for base in (int, float, str):
        if isinstance(value, base):
            return base(value)
    raise TypeError(f"a {kind.__module__}.{kind.__qualname__}, which is not plain data")


def decode(data: object) -> object:
    """The value `encode` made; ValueError for anything else (what the judge reads)."""
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is not list or not data or type(data[0]) is not str:
        raise ValueError("not a tagged value")
    tag, items = data[0], data[1:]
    if tag in ("list", "tuple", "set", "frozenset"):
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](
            decode(item) for item in items)
    if tag == "dict":
        if not all(type(p) is list and len(p) == 2 for p in items):
            raise ValueError("a dict entry is not a pair")
        return {decode(k): decode(v) for k, v in items}
    if tag == "bytes" and len(items) == 1 and type(items[0]) is str:
        return bytes.fromhex(items[0])
    if tag == "complex" and len(items) == 2 and all(type(i) in (int, float) for i in items):
        return complex(*items)
    raise ValueError(f"unknown tag {tag[:20]!r}")


def _send(stream: io.BufferedIOBase, message: list) -> None:
    import json

    stream.write(json.dumps(message).encode() + b"\n")
    stream.flush()


def _receive(stream: io.BufferedIOBase) -> object:
    """The next message, None at end of stream (a message cut off by it included);
    ValueError when it is too long or not JSON."""
    import json

    line = stream.readline(MAX_MESSAGE + 1)
    if len(line) > MAX_MESSAGE:
        raise ValueError("a message longer than the channel carries")
    return json.loads(line) if line.endswith(b"\n") else None


# --- program ---------------------------------------------------------------------------

def _load(source: bytes, name: str) -> types.ModuleType:
    """Run `source` as module `name`; tracebacks name it `main.py` with its own lines."""
    module = types.ModuleType(name)
    module.__file__ = PROGRAM_FILENAME
    sys.modules[name] = module
    sys.argv = [PROGRAM_FILENAME]
    exec(compile(source, PROGRAM_FILENAME, "exec", dont_inherit=True), module.__dict__)
    return module


# --- callee: the solution, answering calls -------------------------------------------------

def _callee(source: bytes, requests: io.BufferedIOBase,
            replies: io.BufferedIOBase) -> None:
    module = _load(source, "__cegraph_solution__")
    while (message := _receive(requests)) is not None:
        name, args, kwargs = message
        try:
            if name not in module.__dict__:
                raise NameError(f"name {name!r} is not defined")
            result = module.__dict__[name](*decode(args), **decode(kwargs))
        except Exception as exc:  # the test sees the exception, raised by the proxy
            try:
                detail = ["raise", type(exc).__name__, encode(list(exc.args))]
            except (TypeError, ValueError, RecursionError):
                detail = ["raise", type(exc).__name__, ["list", str(exc)]]
            _send(replies, detail)
            continue
        try:
            _send(replies, ["ok", encode(result)])
        except TypeError as exc:
            _send(replies, ["bad", f"{name}() returned {exc}"])
        except (ValueError, RecursionError) as exc:  # a cycle, or nesting too deep
            _send(replies, ["bad", f"{name}() returned a value the channel cannot carry "
                            f"({exc})"])


# --- judge: the tests, calling the solution through the channel ----------------------------

class CalleeGone(BaseException):
    """The solution's process closed the channel (exited, crashed, was killed)."""


class BadReturn(BaseException):
    """The solution answered with something other than plain data."""


class ChannelError(BaseException):
    """The test passed the solution something the channel does not carry."""


class SolutionError(Exception):
    """An exception the solution raised whose type the judge does not know by name."""


def strict_eq(a: object, b: object) -> bool:
    """`==` on plain data, except that a bool equals only a bool (`True` is not `1`)."""
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if type(a) is type(b) and type(a) in (list, tuple):
        return len(a) == len(b) and all(strict_eq(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict and type(b) is dict:
        return a.keys() == b.keys() and all(strict_eq(a[k], b[k]) for k in a)
    return a == b


def _strict_equality(tree: object) -> object:
    """`tree` with each `a == b` and `a != b` made a call of `strict_eq`."""
    import ast

    class StrictEquality(ast.NodeTransformer):
        def visit_Compare(self, node: ast.Compare) -> ast.AST:
            self.generic_visit(node)
            if len(node.ops) != 1 or not isinstance(node.ops[0], (ast.Eq, ast.NotEq)):
                return node
            new: ast.expr = ast.Call(ast.Name(_EQ, ast.Load()),
                                     [node.left, node.comparators[0]], [])
            if isinstance(node.ops[0], ast.NotEq):
                new = ast.UnaryOp(ast.Not(), new)
            return ast.copy_location(new, node)

    return ast.fix_missing_locations(StrictEquality().visit(tree))


def _raised(name: str, args: tuple) -> Exception:
    """The solution's exception as the judge's own: a builtin type by name, else generic."""
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(*args)
        except Exception:
            pass
    return SolutionError(f"{name}: {', '.join(map(str, args))}")


def _proxy(name: str, requests: io.BufferedIOBase,
           replies: io.BufferedIOBase) -> types.FunctionType:
    def call(*args: object, **kwargs: object) -> object:
        try:
            _send(requests, [name, encode(list(args)), encode(kwargs)])
        except (TypeError, ValueError, RecursionError) as exc:
            raise ChannelError(f"the test passes {name}() {exc}") from None  # not its fault
        except BrokenPipeError:
            raise CalleeGone() from None
        try:
            reply = _receive(replies)
            if reply is None:
                raise CalleeGone()
            status, *rest = reply
            if status == "ok" and len(rest) == 1:
                return decode(rest[0])
            if status == "raise" and len(rest) == 2 and type(rest[0]) is str:
                error = _raised(rest[0], tuple(decode(rest[1])))
            elif status == "bad" and len(rest) == 1 and type(rest[0]) is str:
                raise BadReturn(rest[0][:300])
            else:
                raise ValueError("an unknown reply")
        except (ValueError, TypeError, RecursionError) as exc:
            raise BadReturn(f"{name}() answered with a malformed reply ({exc})") from None
        raise error

    call.__name__ = call.__qualname__ = name
    return call


def _failing_assert(suite: str, tree: object,
                    tb: types.TracebackType | None) -> tuple[int | None, str]:
    """The suite's line where the exception surfaced, and the assert holding it (one line)."""
    import ast
    import traceback

    lines = [n for f, n in traceback.walk_tb(tb) if f.f_code.co_filename == TESTS_FILENAME]
    if not lines:
        return None, ""
    found = [n for n in ast.walk(tree) if isinstance(n, ast.Assert)
             and n.lineno <= lines[-1] <= (n.end_lineno or n.lineno)]
    text = ast.get_source_segment(suite, found[-1]) if found else None
    return lines[-1], " ".join(text.split()) if text else ""


def _run_suite(suite: str, prelude: str, entry: str, requests: io.BufferedIOBase,
               replies: io.BufferedIOBase) -> dict:
    import ast

    namespace = {"__name__": "__cegraph_tests__", "__builtins__": builtins, _EQ: strict_eq}
    tree = None
    try:
        if prelude:  # HumanEval's prompt: helpers its check() uses (`poly`, `encode_cyclic`)
            exec(compile(prelude, "prompt.py", "exec", dont_inherit=True), namespace)
        namespace[entry] = _proxy(entry, requests, replies)
        tree = ast.parse(suite)
        code = compile(_strict_equality(tree), TESTS_FILENAME, "exec", dont_inherit=True)
        exec(code, namespace)
    except CalleeGone:
        return {"ok": False, "kind": "early_exit", "error": ""}
    except BadReturn as exc:
        return {"ok": False, "kind": "bad_return", "error": str(exc)}
    except ChannelError as exc:
        return {"ok": False, "kind": "exception", "error": f"ChannelError: {exc}"}
    except Exception as exc:
        kind = "assert" if isinstance(exc, AssertionError) else "exception"
        name = type(exc).__name__ if not isinstance(exc, SolutionError) else ""
        error = f"{name}: {exc}" if name else str(exc)
        line, assertion = (_failing_assert(suite, tree, exc.__traceback__) if tree
                           else (None, ""))
        return {"ok": False, "kind": kind, "error": error[:1000], "line": line,
                "assertion": assertion}
    return {"ok": True}


def _judge(payload: bytes, requests: io.BufferedIOBase, replies: io.BufferedIOBase,
           verdict: int) -> None:
    import json

    task = json.loads(payload)
    results = []
    for suite in task["suites"]:  # later suites only run when the earlier ones passed
        results.append(_run_suite(suite, task["prelude"], task["entry"], requests, replies))
        if not results[-1]["ok"]:
            break
    os.write(verdict, json.dumps(results).encode())


# --- entry ---------------------------------------------------------------------------------

def main() -> None:
    role, control, requests_fd, replies_fd, verdict, *rlimits = sys.argv[1:]
    for pair in rlimits:
        res, value = map(int, pair.split("="))
        resource.setrlimit(res, (value, value))
    chunks = []
    while chunk := os.read(int(control), 1 << 16):
        chunks.append(chunk)
    os.close(int(control))
    data = b"".join(chunks)
    if role == "program":
        _load(data, "__main__")
        return
    sys.set_int_max_str_digits(0)  # a big int is plain data too
    # the callee reads requests and writes replies; the judge the other way round
    requests = os.fdopen(int(requests_fd), "rb" if role == "callee" else "wb")
    replies = os.fdopen(int(replies_fd), "wb" if role == "callee" else "rb")
    if role == "callee":
        _callee(data, requests, replies)
    else:
        _judge(data, requests, replies, int(verdict))


if __name__ == "__main__":
    main()
