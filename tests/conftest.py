"""Test environment: offline litellm, a private Prefect home, and a scripted LLM provider."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="cegraph-prefect-"))
os.environ["HF_HUB_OFFLINE"] = "1"
# the default home is a fresh folder, never the checkout's `.cegraph`: a test that passes no
# --home must not meet (or wait on) a job running in the same checkout, such as `make demo`
os.environ["CEGRAPH_HOME"] = tempfile.mkdtemp(prefix="cegraph-home-")

import litellm  # noqa: E402
import prefect.main  # noqa: E402, F401  (Prefect's console log handler binds the stderr it first
import pytest  # noqa: E402         # sees: the session's, not a CliRunner's that then closes)
from litellm import CustomLLM  # noqa: E402

from cegraph.task import Task  # noqa: E402

Reply = Callable[[list[dict[str, str]]], str]


SIX_TASKS = [Task(f"t{i}", "gsm8k", f"What is {i} + 1?", str(i + 1)) for i in range(6)]


class ScriptedLLM(CustomLLM):
    """A litellm provider whose answers come from a test's function of the messages; counts
    the calls that reach it (so replay from the call store is observable). With `delay` set,
    an async call sleeps that long without blocking the loop, and `peak` records the most
    calls in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.reply: Reply = lambda messages: "42"
        self.calls: list[list[dict[str, str]]] = []
        self.fail_first: int = 0
        self.finish_reason = "stop"
        # a test's function of the messages and the call's max_tokens giving the reply and
        # its finish reason (a token cap that cuts the reasoning); `reply` otherwise
        self.capped: Callable[[list[dict[str, str]], int], tuple[str, str]] | None = None
        self.delay = 0.0
        self.in_flight = 0
        self.peak = 0

    def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(messages)
        if self.fail_first > 0:
            self.fail_first -= 1
            raise litellm.ServiceUnavailableError("scripted outage", llm_provider="scripted",
                                                  model=model)
        text, finish = self.reply(messages), self.finish_reason
        if self.capped is not None:
            text, finish = self.capped(
                messages, int((kwargs.get("optional_params") or {}).get("max_tokens") or 0))
        return litellm.ModelResponse(
            model=model, choices=[{"index": 0, "finish_reason": finish,
                                   "message": {"role": "assistant", "content": text}}],
            usage={"prompt_tokens": sum(len(m["content"].split()) for m in messages),
                   "completion_tokens": len(text.split()),
                   "total_tokens": 0})

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            return self.completion(model, messages, *args, **kwargs)
        finally:
            self.in_flight -= 1


_HANDLER = ScriptedLLM()
litellm.custom_provider_map.append({"provider": "scripted", "custom_handler": _HANDLER})


@pytest.fixture
def scripted() -> Iterator[ScriptedLLM]:
    _HANDLER.reply = lambda messages: "42"
    _HANDLER.calls = []
    _HANDLER.fail_first = 0
    _HANDLER.finish_reason = "stop"
    _HANDLER.capped = None
    _HANDLER.delay = 0.0
    _HANDLER.in_flight = 0
    _HANDLER.peak = 0
    yield _HANDLER


def last_user(messages: list[dict[str, str]]) -> str:
    return messages[-1]["content"]


@pytest.fixture(scope="session")
def embedder() -> Any:
    from cegraph.fss.signature import MiniLMEmbedder

    return MiniLMEmbedder()


def half_right_traces(scripted: ScriptedLLM, llm: Any = None, tasks: Any = None) -> list:
    """The seed math workflow on six `What is i + 1?` tasks (`SIX_TASKS`), right for even i
    and off by 10 for odd i, with stable run ids `run-<task id>`."""
    import asyncio

    from cegraph.evaluators import evaluate
    from cegraph.executor import Executor
    from cegraph.llm import LLM
    from cegraph.seeds import seed

    def reply(messages: list[dict[str, str]]) -> str:
        i = int(messages[-1]["content"].split("What is ")[1].split(" ")[0])
        return f"\\boxed{{{i + 1 if i % 2 == 0 else i + 11}}}"

    scripted.reply = reply
    return asyncio.run(Executor(llm or LLM("scripted/m")).run_many(
        seed("math"), tasks or SIX_TASKS, evaluate=evaluate, run_id=lambda t: f"run-{t.id}"))


class FixedProposer:
    """A proposer that returns the same edits every round (no LLM call)."""

    projected_calls = 0

    def __init__(self, *edits: Any) -> None:
        self.edits = edits

    async def propose(self, wf: Any, target: Any, kind: Any, k: int) -> Any:
        from cegraph.refine.proposer import Candidate, Proposals

        return Proposals([Candidate(e, "llm", "scripted") for e in self.edits])


def bench_refine(folder: Any, problems: int, *args: str) -> list[dict]:
    """`cegraph bench refine --json` on `problems` GSM8K-shaped `What is i + 1?` rows written
    to `folder`, with a scripted model; returns the rows of its last (JSON) line."""
    import json

    from typer.testing import CliRunner

    from cegraph.cli.main import app

    data = folder / "gsm8k_validate.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1?",
                                        "answer": f"#### {i + 1}"}) + "\n"
                            for i in range(problems)))
    out = CliRunner().invoke(app, ["bench", "refine", "--model", "scripted/m",
                                   "--data-dir", str(data), "--json", *args])
    assert out.exit_code == 0, out.output
    return json.loads(out.output.strip().splitlines()[-1])["rows"]


def ingest_lines(folder: Any, lines: list[str | bytes], **kw: Any) -> dict:
    """Ingest `lines` (one file) into `folder/home`; asserts the accounting holds (lines read
    = stored + duplicates + quarantined) and returns the ingest's summary."""
    from cegraph.tasks.ingest import ingest_paths

    path = folder / "in.jsonl"
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n"
                              for x in lines))
    s = ingest_paths(str(folder / "home"), [str(path)], **kw).summary
    assert s["lines_read"] == s["lines_stored"] + s["duplicates"] + sum(
        s["quarantined"].values())
    return s


def home_rows(folder: Any, sql: str) -> list[tuple]:
    """The rows of `sql` over `folder/home`, read-only."""
    from cegraph.storage import Warehouse

    with Warehouse(folder / "home", read_only=True) as wh:
        return wh.rows(sql)
