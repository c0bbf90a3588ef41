"""Loaders for the six benchmark validation splits into one `Task` type.

Files follow the AFlow JSONL layout (`{dataset}_validate.jsonl`). The splits ship inside the
package (`cegraph/data/benchmarks`, read through `importlib.resources`, with their NOTICE of
origins and licenses), so a clean clone or an installed wheel needs nothing beside it.
`$CEGRAPH_DATA_DIR` or an explicit `path` (a folder of the same layout, or one JSONL file)
points the loaders at any other data: a user's own splits, a full test set.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from cegraph.task import Task

DATASETS = ("gsm8k", "math", "humaneval", "mbpp", "hotpotqa", "drop")

#: The fields each dataset's rows must have (others are optional or ignored).
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "gsm8k": ("question", "answer"),
    "math": ("problem", "solution"),
    "humaneval": ("task_id", "prompt", "test", "entry_point"),
    "mbpp": ("task_id", "prompt", "test_list", "entry_point"),
    "hotpotqa": ("_id", "question", "answer", "context"),
    "drop": ("context", "ref_text"),
}

#: Where each packaged split comes from and under which license (see its NOTICE.md).
PACKAGED_ORIGIN: dict[str, tuple[str, str]] = {
    "gsm8k": ("GSM8K test set (openai/grade-school-math)", "MIT"),
    "math": ("MATH test set, Level 5, four subjects (hendrycks/math)", "MIT"),
    "humaneval": ("HumanEval (openai/human-eval)", "MIT"),
    "mbpp": ("MBPP sanitized (google-research/mbpp)", "CC-BY-4.0"),
    "hotpotqa": ("HotpotQA dev, distractor setting", "CC BY-SA 4.0"),
    "drop": ("DROP dev (allenai/drop)", "CC BY-SA 4.0"),
}


class DatasetNotFound(FileNotFoundError):
    pass


class DatasetError(ValueError):
    """A data file that cannot be read as its dataset; the message names the file and line."""


def packaged_data_dir() -> Traversable:
    """The benchmark splits shipped inside the package."""
    return resources.files("cegraph") / "data" / "benchmarks"


def default_data_dir() -> Traversable:
    """`$CEGRAPH_DATA_DIR` when set, else the packaged splits."""
    env = os.environ.get("CEGRAPH_DATA_DIR")
    return Path(env) if env else packaged_data_dir()


def _rows(source: Traversable) -> Iterator[tuple[int, dict[str, Any]]]:
    with source.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{source}:{lineno}: not a JSON object ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{source}:{lineno}: not a JSON object")
            yield lineno, row


def _read_jsonl(source: Traversable) -> list[dict[str, Any]]:
    return [row for _, row in _rows(source)]


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    start = text.find("{", idx)
    if start < 0:
        return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return None


def _as_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str) and value.strip().startswith("["):
        return [str(v) for v in ast.literal_eval(value)]
    return []


def _gsm8k(row: dict[str, Any], i: int, _: dict[str, list[str]]) -> Task:
    answer = str(row["answer"])
    gold = answer.split("####")[-1].strip().replace(",", "")
    return Task(row.get("id", f"gsm8k-{i}"), "gsm8k", row["question"], gold,
                metadata={"cot": row.get("cot", "")})


def _math(row: dict[str, Any], i: int, _: dict[str, list[str]]) -> Task:
    gold = last_boxed(row["solution"]) or ""
    return Task(f"math-{i}", "math", row["problem"], gold,
                metadata={"level": row.get("level"), "type": row.get("type")})


def _humaneval(row: dict[str, Any], _: int, public: dict[str, list[str]]) -> Task:
    tid = row["task_id"]
    return Task(tid, "humaneval", row["prompt"], row["test"], tuple(public.get(tid, ())),
                metadata={"entry_point": row["entry_point"], "prompt": row["prompt"],
                          "canonical": row.get("canonical_solution", "")})


def _mbpp(row: dict[str, Any], _: int, public: dict[str, list[str]]) -> Task:
    tests = _as_list(row.get("test_list"))
    imports = _as_list(row.get("test_imports"))
    grading = "\n".join(imports + tests)
    entry = row["entry_point"]
    # Public tests are written against `candidate`; MBPP's first assert is the public one.
    shown = public.get(entry) or [t.replace(f"{entry}(", "candidate(", 1) for t in tests[:1]]
    return Task(f"mbpp-{row['task_id']}", "mbpp", row["prompt"], grading, tuple(shown),
                metadata={"entry_point": entry})


def _hotpotqa(row: dict[str, Any], _: int, __: dict[str, list[str]]) -> Task:
    paragraphs = "\n".join(f"{title}: {''.join(sents)}" for title, sents in row["context"])
    text = f"Context:\n{paragraphs}\n\nQuestion: {row['question']}"
    return Task(row["_id"], "hotpotqa", text, row["answer"], metadata={"question": row["question"]})


def _drop(row: dict[str, Any], i: int, _: dict[str, list[str]]) -> Task:
    return Task(f"drop-{row.get('id', i)}", "drop", row["context"], row["ref_text"])


_LOADERS: dict[str, Callable[[dict[str, Any], int, dict[str, list[str]]], Task]] = {
    "gsm8k": _gsm8k, "math": _math, "humaneval": _humaneval,
    "mbpp": _mbpp, "hotpotqa": _hotpotqa, "drop": _drop,
}


def _public_tests(dataset: str, folder: Traversable) -> dict[str, list[str]]:
    path = folder / f"{dataset}_public_test.jsonl"
    if not path.is_file():
        return {}
    key = "problem_id" if dataset == "humaneval" else "entry_point"
    return {str(r[key]): list(r["test"]) for r in _read_jsonl(path)}


def data_file(dataset: str, path: str | Path | None = None) -> Traversable:
    """The JSONL file `load` reads for `dataset` (see `load` for `path`)."""
    if dataset not in _LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    base: Traversable = Path(path) if path else default_data_dir()
    file = base if base.is_file() else base / f"{dataset}_validate.jsonl"
    if not file.is_file():
        raise DatasetNotFound(
            f"{file} not found; pass --data with a {dataset} JSONL file or a folder holding "
            f"{dataset}_validate.jsonl (or set CEGRAPH_DATA_DIR), or unset CEGRAPH_DATA_DIR to "
            "use the packaged splits")
    return file


def load(dataset: str, *, path: str | Path | None = None, n: int | None = None,
         seed: int = 0) -> list[Task]:
    """Load a benchmark as Tasks; `n` draws a deterministic seeded sample (file order kept).

    `path` is either a folder holding `{dataset}_validate.jsonl` (and optionally
    `{dataset}_public_test.jsonl`) or the JSONL file itself; by default the packaged split
    (or `$CEGRAPH_DATA_DIR`). A row missing a required field raises `DatasetError` naming
    the file, the line and the fields expected.
    """
    file = data_file(dataset, path)
    folder = file.parent if isinstance(file, Path) else packaged_data_dir()
    public = _public_tests(dataset, folder)
    required = REQUIRED_FIELDS[dataset]
    tasks = []
    for i, (lineno, row) in enumerate(_rows(file)):
        missing = [f for f in required if f not in row]
        if missing:
            raise DatasetError(f"{file}:{lineno}: missing field(s) {', '.join(missing)}; a "
                               f"{dataset} row needs {', '.join(required)}")
        tasks.append(_LOADERS[dataset](row, i, public))
    if n is not None and n < len(tasks):
        keep = sorted(random.Random(seed).sample(range(len(tasks)), n))
        tasks = [tasks[i] for i in keep]
    return tasks


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    rows: int
    location: str
    origin: str
    license: str


def available(path: str | Path | None = None) -> list[DatasetInfo]:
    """Every dataset `load` can read from `path` (default: as `load` would), with row counts."""
    found = []
    for name in DATASETS:
        try:
            file = data_file(name, path)
        except DatasetNotFound:
            continue
        packaged = not path and not os.environ.get("CEGRAPH_DATA_DIR")
        origin, license_ = PACKAGED_ORIGIN[name] if packaged else ("user data", "see its source")
        rows = sum(1 for _ in _rows(file))
        found.append(DatasetInfo(name, rows, "packaged" if packaged else str(file), origin,
                                 license_))
    return found


_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str:
    """The Python code in an LLM answer: the longest fenced block, else the text itself."""
    blocks = _CODE_BLOCK.findall(text)
    if blocks:
        return max(blocks, key=len).strip("\n")
    unterminated = re.search(r"```(?:python|py)?\s*\n(.*)", text, re.DOTALL)
    return (unterminated.group(1) if unterminated else text).strip("\n")
