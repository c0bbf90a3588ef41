"""The receiver's spool: every accepted OTLP request, one JSON line each, appended and
fsynced before the receiver answers 200, so an acknowledged request survives a crash. A
single drainer stores the spool's lines past its cursor and then commits the cursor; a crash
between the two replays those lines, which the ingest's deduplication (trace and span ids)
turns into duplicates, so nothing is stored twice.

Files under `<home>/spool/`: `requests.jsonl` (the lines), `cursor.json` (`offset`: bytes
stored, `seq`: requests stored so far, the line numbers of quarantine rows) and `lock` (one
receiver per home). Once the drainer has caught up, the file is emptied (the cursor then says
0; a crash between the two leaves a cursor past the end, read as 0)."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO


class SpoolBusy(RuntimeError):
    """Another receiver holds this home's spool."""


@dataclass(frozen=True)
class Cursor:
    offset: int = 0
    seq: int = 0


class Spool:
    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "spool"
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "requests.jsonl"
        self.cursor_path = self.root / "cursor.json"
        self._lock_file: IO[bytes] = (self.root / "lock").open("ab")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SpoolBusy(f"{self.root} is held by another `cegraph collect`") from None
        self._append_lock = threading.Lock()
        self._file = self.path.open("ab")
        self._drop_partial_tail()

    def _drop_partial_tail(self) -> None:
        """A line cut by a crash mid-write was never acknowledged: drop it, so the next line
        does not glue onto it."""
        size = self.path.stat().st_size
        if not size:
            return
        with self.path.open("rb") as f:
            f.seek(max(0, size - 1))
            if f.read(1) == b"\n":
                return
            keep, pos = 0, 0
            f.seek(0)
            for line in f:
                pos += len(line)
                if line.endswith(b"\n"):
                    keep = pos
        os.truncate(self.path, keep)

    def close(self) -> None:
        self._file.close()
        self._lock_file.close()

    # --- the receiver's side ---------------------------------------------------------------
    def append(self, line: bytes) -> None:
        """Durably append one request (a JSON document without newlines)."""
        with self._append_lock:
            self._file.write(line + b"\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def backlog(self) -> int:
        """Bytes accepted and not yet stored."""
        return max(0, self.path.stat().st_size - self.cursor().offset)

    # --- the drainer's side ----------------------------------------------------------------
    def cursor(self) -> Cursor:
        try:
            data = json.loads(self.cursor_path.read_text())
            cursor = Cursor(int(data["offset"]), int(data["seq"]))
        except FileNotFoundError:
            return Cursor()
        return cursor if cursor.offset <= self.path.stat().st_size else Cursor(0, cursor.seq)

    def pending(self, limit_bytes: int = 64 * 1024 * 1024
                ) -> Iterator[tuple[int, bytes, Cursor]]:
        """(request number, line, the cursor once it is stored) past the cursor, whole lines
        only, up to about `limit_bytes` per call."""
        start = self.cursor()
        with self.path.open("rb") as f:
            f.seek(start.offset)
            offset, seq = start.offset, start.seq
            for line in f:
                if not line.endswith(b"\n") or offset - start.offset > limit_bytes:
                    return
                offset += len(line)
                seq += 1
                yield seq, line[:-1], Cursor(offset, seq)

    def commit(self, cursor: Cursor) -> None:
        """Record `cursor` as stored (atomically); empty the file once all of it is."""
        self._write_cursor(cursor)
        with self._append_lock:
            if cursor.offset and cursor.offset == self.path.stat().st_size:
                os.truncate(self.path, 0)
                self._write_cursor(Cursor(0, cursor.seq))

    def _write_cursor(self, cursor: Cursor) -> None:
        tmp = self.cursor_path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump({"offset": cursor.offset, "seq": cursor.seq}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.cursor_path)
