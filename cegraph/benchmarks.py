"""Loaders for the six benchmark validation splits into one `Task` type.

Files follow the AFlow JSONL layout (`{dataset}_validate.jsonl`). The data directory is
`$CEGRAPH_DATA_DIR`, else `../shared/data/benchmarks` next to the working directory or the
package checkout; any path can be passed explicitly.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cegraph.task import Task

DATASETS = ("gsm8k", "math", "humaneval", "mbpp", "hotpotqa", "drop")


class DatasetNotFound(FileNotFoundError):
    pass


def default_data_dir() -> Path:
    env = os.environ.get("CEGRAPH_DATA_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    for base in (Path.cwd(), here):
        for candidate in (base.parent / "shared/data/benchmarks", base / "shared/data/benchmarks"):
            if candidate.is_dir():
                return candidate
    return Path.cwd().parent / "shared/data/benchmarks"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


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


def _public_tests(dataset: str, data_dir: Path) -> dict[str, list[str]]:
    path = data_dir / f"{dataset}_public_test.jsonl"
    if not path.exists():
        return {}
    key = "problem_id" if dataset == "humaneval" else "entry_point"
    return {str(r[key]): list(r["test"]) for r in _read_jsonl(path)}


def load(dataset: str, *, path: str | Path | None = None, n: int | None = None,
         seed: int = 0) -> list[Task]:
    """Load a benchmark as Tasks; `n` draws a deterministic seeded sample (file order kept).

    `path` is either a data directory holding `{dataset}_validate.jsonl` or the JSONL file.
    """
    if dataset not in _LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    base = Path(path) if path else default_data_dir()
    file = base if base.is_file() else base / f"{dataset}_validate.jsonl"
    if not file.exists():
        raise DatasetNotFound(
            f"{file} not found; pass --data-dir or set CEGRAPH_DATA_DIR to the benchmarks folder")
    public = _public_tests(dataset, file.parent)
    tasks = [_LOADERS[dataset](row, i, public) for i, row in enumerate(_read_jsonl(file))]
    if n is not None and n < len(tasks):
        keep = sorted(random.Random(seed).sample(range(len(tasks)), n))
        tasks = [tasks[i] for i in keep]
    return tasks


_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str:
    """The Python code in an LLM answer: the longest fenced block, else the text itself."""
    blocks = _CODE_BLOCK.findall(text)
    if blocks:
        return max(blocks, key=len).strip("\n")
    unterminated = re.search(r"```(?:python|py)?\s*\n(.*)", text, re.DOTALL)
    return (unterminated.group(1) if unterminated else text).strip("\n")
