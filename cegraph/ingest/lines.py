"""The input lines of an ingest: files, directories (their files, recursively), globs and
`-` (stdin), plain or gzip; read as bytes, one line at a time (constant memory). Files of OTLP
log records go first, so a trace's content events are staged before its spans complete it."""

from __future__ import annotations

import glob
import gzip
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

#: the files a directory contributes (a file named explicitly is read whatever its name)
LOG_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz")


class InputError(ValueError):
    pass


def expand(paths: Sequence[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if p == "-":
            out.append(p)
        elif Path(p).is_dir():
            out += sorted(str(f) for f in Path(p).rglob("*") if f.is_file()
                          and not f.name.startswith(".") and f.name.endswith(LOG_SUFFIXES))
        elif Path(p).is_file():
            out.append(p)
        else:
            found = sorted(glob.glob(p, recursive=True))
            if not found:
                raise InputError(f"{p}: no such file, directory or glob match")
            out += [f for f in found if Path(f).is_file()]
    return sorted(dict.fromkeys(out), key=lambda f: (not _holds_logs(f), out.index(f)))


def _open(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115


def _holds_logs(path: str) -> bool:
    if path == "-":
        return False
    try:
        with _open(path) as f:
            return b'"resourceLogs"' in f.read(4096) or b'"resource_logs"' in f.read(0)
    except (OSError, EOFError):
        return False


def read(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes without the newline); a gzip cut short ends the file."""
    f = _open(path)
    try:
        for n, line in enumerate(f, start=1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield n, line
    except (EOFError, gzip.BadGzipFile):
        return
    finally:
        if path != "-":
            f.close()
