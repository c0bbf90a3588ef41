"""The input lines of an ingest: files, directories (their files, recursively), globs and
`-` (stdin), plain or gzip; read as bytes, one line at a time (constant memory, whatever a
line's length). Files of OTLP
log records go first, so a trace's content events are staged before its spans complete it."""

from __future__ import annotations

import glob
import gzip
import sys
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

#: the files a directory contributes (a file named explicitly is read whatever its name)
LOG_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz")


#: the default cap on one line (--max-line-bytes): a longer one is quarantined with its head
MAX_LINE = 64 * 1024 * 1024
CHUNK = 1024 * 1024
BOM = b"\xef\xbb\xbf"


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
            head = f.read(4096)
        return b'"resourceLogs"' in head or b'"resource_logs"' in head
    except (OSError, EOFError, zlib.error):
        return False


class Cut(NamedTuple):
    """Why a line could not be read whole: `oversized_line` (its head is kept),
    `gzip_truncated` / `gzip_corrupt` (what was readable of the lost tail is kept)."""

    reason: str
    detail: str


def read(path: str, *, max_line: int = MAX_LINE
         ) -> Iterator[tuple[int, bytes, Cut | None]]:
    """(line number, raw bytes without the newline, why it is cut or None), in constant
    memory: a line over `max_line` bytes keeps its first `max_line` and is skipped to its end;
    a gzip cut short or corrupt ends the file with one last cut line saying so."""
    f = _open(path)
    split = _Splitter(max_line)
    try:
        while True:
            try:
                chunk = f.read1(CHUNK)
            except (EOFError, OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
                reason = "gzip_truncated" if isinstance(exc, EOFError) else "gzip_corrupt"
                yield split.lost(reason, f"{exc}")
                return
            if not chunk:
                break
            yield from split.feed(chunk)
        yield from split.end()
    finally:
        if path != "-":
            f.close()


class _Splitter:
    """Bytes -> lines, holding at most `max_line` bytes of the line being read."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.n = 0
        self.head = bytearray()  # the current line so far, up to max_line bytes
        self.size = 0  # its full size

    def _add(self, piece: bytes) -> None:
        self.size += len(piece)
        room = self.max_line - len(self.head)
        if room > 0:
            self.head += piece[:room]

    def _emit(self, whole: bytes | None = None) -> Iterator[tuple[int, bytes, Cut | None]]:
        """The line read so far, or `whole`, a line that came in one piece (not copied)."""
        self.n += 1
        if whole is not None:
            line, size = whole, len(whole)
        else:
            line, size = bytes(self.head), self.size
            self.head.clear()
            self.size = 0
        if self.n == 1 and line.startswith(BOM):  # a UTF-8 BOM (Windows tools) is no JSON
            line, size = line[len(BOM):], size - len(BOM)
        if size > self.max_line:
            yield self.n, line, Cut("oversized_line", f"{size} bytes, over the "
                                    f"{self.max_line}-byte line cap (--max-line-bytes)")
            return
        line = line.rstrip(b"\r")
        if line and not line.isspace():  # (strip() would copy the line to say so)
            yield self.n, line, None

    def feed(self, chunk: bytes) -> Iterator[tuple[int, bytes, Cut | None]]:
        *whole, rest = chunk.split(b"\n")
        for part in whole:
            if not self.size and len(part) <= self.max_line:  # the common case
                yield from self._emit(part)
                continue
            self._add(part)
            yield from self._emit()
        self._add(rest)

    def end(self) -> Iterator[tuple[int, bytes, Cut | None]]:
        if self.size:
            yield from self._emit()

    def lost(self, reason: str, detail: str) -> tuple[int, bytes, Cut]:
        return self.n + 1, bytes(self.head), Cut(reason, (
            f"{detail}: the rest of the file is unreadable; line {self.n + 1} is cut after "
            f"{self.size} bytes, any lines after it are lost"))
