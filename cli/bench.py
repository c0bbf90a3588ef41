"""`cegraph bench ...`: benchmark scripts that print their figures (never timed tests)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from cegraph.cli import render
from cegraph.cli.options import Counterexamples, DataPath, MaxBreakRate, Model
from cegraph.task import Task
from cegraph.trace import Trace

app = typer.Typer(help="Benchmarks that print their figures (--json: one JSON object last).",
                  no_args_is_help=True)


def print_traces(traces: Sequence[Trace], *, show: bool = False, as_json: bool = False
                 ) -> None:
    if as_json:
        print(json.dumps([{"task_id": t.task_id, "version_id": t.version_id,
                           "passed": bool(t.outcome and t.outcome.passed),
                           "outcome": "pass" if t.outcome and t.outcome.passed else
                           (t.outcome.failure_class if t.outcome else None),
                           "message": t.outcome.message if t.outcome else "",
                           "output": t.output, "tokens": t.tokens, "llm_calls": t.llm_calls,
                           "seconds": round(t.ended - t.started, 3)} for t in traces]))
        return
    rows = []
    for t in traces:
        o = t.outcome
        rows.append([t.task_id, "pass" if o and o.passed else (o.failure_class if o else "?"),
                     t.tokens, t.llm_calls, f"{t.ended - t.started:.1f}",
                     " -> ".join(s.node_id + ("!" if s.error else "") for s in t.spans),
                     o.message if o else ""])
        if show:
            for s in t.spans:
                render.console.print(f"  [{t.task_id}] {s.node_id} ({s.operator}) "
                                     f"out={json.dumps(s.outputs)[:300]} err={s.error}")
    render.grid(["task", "outcome", "tokens", "calls", "s", "nodes", "message"], rows,
                title="traces")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@app.command("seed")
def bench_seed(dataset: Annotated[str, typer.Option("--dataset", "-d")] = "gsm8k",
               n: Annotated[int, typer.Option("--n")] = 50,
               model: Model = "qwen2.5-coder-1.5b",
               data_dir: DataPath = None,
               concurrency: int | None = None, seed: int = 0,
               as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Run the dataset's seed workflow with fresh (uncached) calls; print accuracy, tokens,
    LLM calls, wall time and tokens/s."""
    from cegraph.benchmarks import load
    from cegraph.evaluators import evaluate
    from cegraph.executor import Executor
    from cegraph.llm import LLM
    from cegraph.local_model import MODELS, fetch
    from cegraph.seeds import seed as seed_workflow

    if model in MODELS:
        fetch(model, progress=render.console.print)
    wf = seed_workflow(dataset)
    tasks = load(dataset, path=data_dir, n=n, seed=seed)
    llm = LLM(model, concurrency=concurrency)
    started = time.perf_counter()
    with render.progress(len(tasks), f"{wf.name} x {dataset}",
                         lambda: llm.meter.tokens_out) as progress:
        traces = asyncio.run(Executor(llm, concurrency=concurrency).run_many(
            wf, tasks, evaluate=evaluate, on_done=progress.run_done))
    wall = time.perf_counter() - started
    passed = sum(1 for t in traces if t.outcome and t.outcome.passed)
    tokens = llm.meter.tokens_in + llm.meter.tokens_out
    figures = {"dataset": dataset, "n": len(tasks), "model": model, "workflow": wf.name,
               "concurrency": llm.concurrency,
               "accuracy": passed / len(tasks), "llm_calls": llm.meter.calls, "tokens": tokens,
               "tokens_out": llm.meter.tokens_out, "wall_s": round(wall, 2),
               "tokens_per_s": round(tokens / wall, 2),
               "completion_tokens_per_s": round(llm.meter.tokens_out / wall, 2)}
    classes: dict[str, int] = {}
    for t in traces:
        if t.outcome and not t.outcome.passed:
            classes[t.outcome.failure_class or "?"] = classes.get(t.outcome.failure_class or "?",
                                                                  0) + 1
    figures["failure_classes"] = classes
    render.grid(list(figures), [[str(v) for v in figures.values()]], title="bench seed")
    if as_json:
        print(json.dumps(figures))


# --- the inference path against the raw engine -------------------------------------------
def _cpu() -> str:
    """The CPU model, its cores and the features the engine's build uses."""
    from cegraph.engine import info

    name = next((line.split(":", 1)[1].strip() for line in
                 Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "?") if Path("/proc/cpuinfo").exists() else "?"
    e = info()
    return f"{name}, {e['cores']} cores, {e['cpu_features']}"


@app.command("llm")
def bench_llm(model: Model = "qwen2.5-coder-1.5b",
              requests: Annotated[int, typer.Option(
                  "--requests", help="benchmark problems; each sends its seed workflow's "
                                     "calls")] = 8,
              concurrency: Annotated[int | None, typer.Option(
                  help="problems in flight (default: the product's, the engine's slots)")
                                     ] = None,
              dataset: Annotated[str, typer.Option("--dataset", "-d")] = "gsm8k",
              data_dir: DataPath = None, seed: int = 0,
              as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Time the seed workflow's real requests on benchmark problems twice: through cegraph's
    whole path (executor + LLM layer + litellm + provider, an empty call store so every call
    reaches the engine) and straight into the engine (a fresh server, no prefix kept from
    the first pass, the same requests, each problem's calls in order, as many problems at
    once). Prints generated and prompt tok/s of each, their ratio, and the prompt tokens the
    engine evaluated per problem against those the prompts hold (the prefix cache's saving)."""
    from concurrent.futures import ThreadPoolExecutor

    from cegraph.benchmarks import load
    from cegraph.engine import ENGINE, Engine, request_of
    from cegraph.evaluators import evaluate
    from cegraph.executor import Executor
    from cegraph.llm import LLM
    from cegraph.local_model import MODELS, fetch
    from cegraph.seeds import seed as seed_workflow

    if model not in MODELS:
        render.console.print(f"[red]error:[/red] bench llm times the embedded engine: give "
                             f"--model one of {', '.join(MODELS)}")
        raise typer.Exit(2)
    fetch(model, progress=render.console.print)
    wf = seed_workflow(dataset)
    tasks = load(dataset, path=data_dir, n=requests, seed=seed)
    llm = LLM(model, concurrency=concurrency)  # its own empty call store: all misses
    c = concurrency or llm.concurrency
    warm_up = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    # loading the weights, first allocations and litellm's first-call setup are not throughput
    asyncio.run(llm.complete(warm_up["messages"], max_tokens=1))
    before = ENGINE.snapshot()
    started = time.perf_counter()
    with render.progress(len(tasks), "product path", lambda: llm.meter.tokens_out) as progress:
        traces = asyncio.run(Executor(llm, concurrency=c).run_many(
            wf, tasks, evaluate=evaluate, on_done=progress.run_done))
    product_s = time.perf_counter() - started
    product = ENGINE.snapshot().minus(before)

    raw_engine = Engine()
    raw_engine.chat(model, warm_up)
    warmed = raw_engine.snapshot()
    chains = [[request_of(call.messages, call.params) for span in t.spans for call in span.calls]
              for t in traces]
    started = time.perf_counter()
    with render.progress(len(chains), "raw engine",
                         lambda: raw_engine.snapshot().generated - warmed.generated
                         ) as progress:
        def chain(requests: list[dict]) -> None:
            for request in requests:
                raw_engine.chat(model, request)
            progress.advance()

        with ThreadPoolExecutor(max_workers=c) as pool:
            list(pool.map(chain, chains))
    raw_s = time.perf_counter() - started
    raw = raw_engine.snapshot().minus(warmed)

    def per_s(tokens: int, seconds: float) -> float:
        return round(tokens / seconds, 2) if seconds > 0 else 0.0

    raw_gen, product_gen = per_s(raw.generated, raw_s), per_s(product.generated, product_s)
    n = max(1, len(traces))
    figures = {
        "model": model, "dataset": dataset, "problems": len(traces), "concurrency": c,
        "calls": product.requests, "raw_s": round(raw_s, 2), "product_s": round(product_s, 2),
        "raw_gen_tok_s": raw_gen, "product_gen_tok_s": product_gen,
        "ratio": round(product_gen / raw_gen, 3) if raw_gen else 0.0,
        "raw_prompt_tok_s": per_s(raw.prompt_evaluated, raw_s),
        "product_prompt_tok_s": per_s(product.prompt_evaluated, product_s),
        # the engine's own prompt-processing speed (evaluated tokens over prompt time)
        "prompt_tok_s": per_s(raw.prompt_evaluated, raw.prompt_ms / 1000),
        "generated": [raw.generated, product.generated],
        "prompt_tokens_per_problem": round((product.prompt_evaluated
                                            + product.prompt_cached) / n, 1),
        "prompt_tokens_evaluated_per_problem": round(product.prompt_evaluated / n, 1),
        "accuracy": sum(1 for t in traces if t.outcome and t.outcome.passed) / n,
        "cpu": _cpu()}
    render.grid(["", "generated tok/s", "prompt tok/s (evaluated)", "wall s"],
                [["raw engine", raw_gen, figures["raw_prompt_tok_s"], figures["raw_s"]],
                 ["product path", product_gen, figures["product_prompt_tok_s"],
                  figures["product_s"]]],
                title=f"bench llm: {model}, {len(traces)} {dataset} problems, {c} in flight")
    render.console.print(
        f"ratio product/raw {figures['ratio']}; prompt tokens per problem "
        f"{figures['prompt_tokens_per_problem']}, evaluated "
        f"{figures['prompt_tokens_evaluated_per_problem']} (the rest came from kept "
        f"prefixes); engine prompt speed {figures['prompt_tok_s']} tok/s; {figures['cpu']}")
    if as_json:
        print(json.dumps(figures))


# --- the Failure Signature Space benchmark ----------------------------------------------------
_EXC = ["AssertionError", "TypeError", "ValueError", "IndexError", "KeyError", "ZeroDivisionError",
        "AttributeError", "NameError", "RecursionError", "TimeoutError"]
_PHRASES = ["list index out of range at position", "unsupported operand for value",
            "cannot convert string to float near column", "maximum recursion depth exceeded at",
            "division by zero in step", "object has no attribute total after line",
            "invalid literal for int with base", "expected a sequence of length",
            "tuple index out of range for item", "missing required argument number",
            "answer cut off at the token limit after", "no number found in the answer after",
            "the program printed nothing after", "wrong type returned from helper at",
            "unexpected keyword argument in call", "string indices must be integers at",
            "dictionary changed size during iteration at", "float object is not iterable at",
            "negative dimensions are not allowed at", "math domain error in square root at",
            "expected the total cost, got a different amount:",
            "expected the number of days, got another count:",
            "expected the final percentage, got a different one:",
            "expected the area in square units, got:", "expected the remaining money, got:"]
_LOCI = [("solve", "ChainOfThought", 1), ("format", "Format", 2), ("code", "Programmer", 1),
         ("test", "Test", 2), ("revise", "Revise", 3), ("review", "Review", 2),
         ("vote", "SelfConsistency", 1), ("generate", "Generate", 1), ("answer", "Format", 3),
         ("ensemble", "ScEnsemble", 2)]


def synthetic_failures(count: int, *, templates: int = 300, seed: int = 0) -> list:
    """Realistic repeats: `templates` message templates with varying numbers, ~10 loci."""
    from cegraph.fss.failure import Failure

    rng = random.Random(seed)
    shapes = [(f"{_EXC[i % len(_EXC)]}: {_PHRASES[(i // len(_EXC)) % len(_PHRASES)]} {{}}"
               + (" (expected {}, got {})" if i % 3 == 0 else ""), _LOCI[i % len(_LOCI)])
              for i in range(templates)]
    weights = [1.0 / (1 + i) ** 0.8 for i in range(templates)]  # a few dominant modes
    picks = rng.choices(range(templates), weights=weights, k=count)
    out = []
    now = time.time()
    for j, t in enumerate(picks):
        text, (node, op, depth) = shapes[t]
        nums = [rng.randint(0, 10_000) for _ in range(text.count("{}"))]
        out.append(Failure(f"f{j:08d}", f"r{j:08d}", "bench", "v0", f"t{j}", node, op, depth,
                           "exception", text.format(*nums), "", "", now))
    return out


@app.command("fss")
def bench_fss(failures: Annotated[int, typer.Option("--failures")] = 100_000,
              span_rows: Annotated[int, typer.Option("--span-rows")] = 1_000_000,
              queries: int = 200,
              as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Signatures -> LanceDB, modes, kNN latency and history writes at scale, on synthetic
    failures in a temporary home."""
    from cegraph.fss.modes import find_modes
    from cegraph.fss.signature import MiniLMEmbedder, SignatureBuilder
    from cegraph.storage import VectorIndex, Warehouse, history

    pool = synthetic_failures(failures)
    embedder = MiniLMEmbedder()
    with tempfile.TemporaryDirectory(prefix="cegraph-bench-") as tmp, Warehouse(tmp) as wh:
        builder = SignatureBuilder(embedder, cache=wh)
        t0 = time.perf_counter()
        sigs = builder.build(pool)
        index = VectorIndex(Path(tmp) / "vectors", builder.dim)
        for i in range(0, len(sigs), 20_000):  # appends arrive in batches, as nightly jobs do
            index.add(sigs[i:i + 20_000], workflow="bench", version_id="v0")
        wh.record_signatures(pool, sigs, embedding_model=embedder.name, locus_weight=0.3)
        signatures_s = time.perf_counter() - t0
        distinct_texts = len({s.text_hash for s in sigs})

        t0 = time.perf_counter()
        result = find_modes(sigs)
        modes_s = time.perf_counter() - t0
        peak = _peak_rss_mb()

        rng = np.random.default_rng(0)
        latencies = []
        for qi in rng.integers(0, len(sigs), size=queries):
            t = time.perf_counter()
            index.nearest(sigs[int(qi)].vector, k=20)
            latencies.append((time.perf_counter() - t) * 1000)

        n = span_rows
        cols = {
            "run_id": [f"r{i // 4:08d}" for i in range(n)],
            "node_id": ["solve", "format", "test", "revise"] * (n // 4) + ["solve"] * (n % 4),
            "operator": ["ChainOfThought"] * n, "depth": [1] * n, "position": [i % 4 for i in
                                                                              range(n)],
            "inputs": [f'{{"input": "problem {i // 4}"}}' for i in range(n)],
            "outputs": [f'{{"solution": "step {i}: the answer is {i % 997}"}}' for i in range(n)],
            "started_at": [None] * n, "latency_s": [0.5] * n, "tokens_in": [100] * n,
            "tokens_out": [50] * n, "cost": [0.0] * n, "call_keys": [[f"k{i:08x}"] for i in
                                                                   range(n)],
            "error": [None] * n, "error_type": [None] * n, "skipped": [False] * n,
            "truncated": [False] * n, "infrastructure": [False] * n}
        t0 = time.perf_counter()
        history.write(Path(tmp) / "history", "spans", cols, batch_id="bench-fss")
        history_s = time.perf_counter() - t0

    figures = {"failures": failures, "distinct_texts": distinct_texts,
               "embedder_calls": embedder.calls, "modes": len(result.modes),
               "noise": len(result.noise_ids), "signatures_s": round(signatures_s, 2),
               "modes_s": round(modes_s, 2), "modes_peak_rss_mb": round(peak, 1),
               "knn_p50_ms": round(statistics.median(latencies), 2),
               "knn_indexed": index.has_index(), "history_write_1m_s": round(history_s, 2),
               "span_rows": n}
    render.grid(list(figures), [[str(v) for v in figures.values()]], title="bench fss")
    if as_json:
        print(json.dumps(figures))


def canonical_solutions(dataset: str) -> list[tuple[Task, str]]:
    """Every packaged HumanEval or MBPP task with its dataset's reference solution."""
    from cegraph.benchmarks import data_file, load

    tasks = load(dataset)
    if dataset == "humaneval":
        return [(t, t.metadata["prompt"] + t.metadata["canonical"]) for t in tasks]
    code = {f"mbpp-{row['task_id']}": row["code"]
            for row in map(json.loads, data_file(dataset).read_text().splitlines())}
    return [(t, code[t.id]) for t in tasks]


@app.command("sandbox")
def bench_sandbox(runs: Annotated[int, typer.Option("--runs")] = 20,
                  canonical: Annotated[bool, typer.Option(
                      "--canonical", help="also grade every packaged HumanEval and MBPP "
                      "reference solution (all must pass)")] = False,
                  as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Median start-to-finish time of a trivial program and of a HumanEval grading, with
    kernel isolation and in the unisolated mode; with --canonical, how many reference
    solutions grade passing (on the hidden and the full suite) and the time per grading."""
    import os

    from cegraph.benchmarks import load
    from cegraph.evaluators import grade_code
    from cegraph.sandbox import MODE_ENV, UNISOLATED, current_mode, run_python

    if (mode := current_mode()).isolation == "refused":
        raise typer.BadParameter(mode.why)
    task = load("humaneval", n=1, seed=0)[0]
    solution = task.metadata.get("prompt", "") + task.metadata.get("canonical", "")

    def median_ms(work: Callable[[], object]) -> float:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            work()
            times.append((time.perf_counter() - t) * 1000)
        return round(statistics.median(times), 1)

    def trivial() -> None:
        assert run_python("print(1)").ok

    def grading() -> None:
        assert grade_code(task, solution).passed

    trivial_ms, grading_ms = median_ms(trivial), median_ms(grading)
    previous = os.environ.get(MODE_ENV)
    os.environ[MODE_ENV] = UNISOLATED
    try:
        trivial_plain, grading_plain = median_ms(trivial), median_ms(grading)
    finally:
        if previous is None:
            del os.environ[MODE_ENV]
        else:
            os.environ[MODE_ENV] = previous
    figures: dict[str, object] = {
        "runs": runs, "task": task.id, "trivial_ms": trivial_ms, "grading_ms": grading_ms,
        "trivial_ms_unisolated": trivial_plain, "grading_ms_unisolated": grading_plain,
        "added_ms": round(trivial_ms - trivial_plain, 1)}
    if canonical:
        for dataset in ("humaneval", "mbpp"):
            pairs = canonical_solutions(dataset)
            started = time.perf_counter()
            failed = []
            for t, code in pairs:
                outcome = grade_code(t, f"```python\n{code}\n```")
                if not (outcome.passed and outcome.score_all == 1.0):
                    failed.append(f"{t.id}: {outcome.failure_class} {outcome.message}")
            figures[f"{dataset}_canonical"] = f"{len(pairs) - len(failed)}/{len(pairs)}"
            figures[f"{dataset}_ms_per_grading"] = round(
                (time.perf_counter() - started) * 1000 / len(pairs), 1)
            for line in failed:
                render.console.print(f"canonical solution failed: {render.escape(line)}")
    render.grid(list(figures), [[str(v) for v in figures.values()]], title="bench sandbox")
    if as_json:
        print(json.dumps(figures))


def streaming_gc() -> None:
    """Tune the collector for a long streaming job: the imported libraries' objects are
    frozen out of collections and young collections run less often (each full pass over
    GX's, pandas' and torch's objects otherwise costs more than parsing a batch)."""
    import gc

    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


#: `--shape real`: message content as the GenAI instrumentation captures it (system
#: instructions, a few-shot prompt and a worked completion), ~1.9 KB per span on average
REAL_PROMPT = ("You are a careful math tutor. Solve the problem step by step, check each "
               "step, then give the final answer on its own line. ") * 16
REAL_ANSWER = ("Let us work through this carefully. First we add the tens, then the units, "
               "and we check the sum by subtracting one addend back out. ") * 9


def genai_lines(spans: int, *, per_line: int = 50, seed: int = 0,
                real: bool = False) -> Iterator[bytes]:
    """OTLP/JSON export lines of real-shaped GenAI traces (as openai-v2 + util-genai write
    them: an `invoke_workflow` root, two steps, a chat call in each, an evaluation event),
    `per_line` spans per line, runs interleaved the way a BatchSpanProcessor flushes them;
    `real`: with full message content (`REAL_PROMPT`, `REAL_ANSWER`)."""
    rng = random.Random(seed)
    prompt, worked = (REAL_PROMPT, REAL_ANSWER) if real else ("", "")

    def attr(key: str, value: object) -> dict:
        kind = ("intValue" if isinstance(value, int) else "doubleValue"
                if isinstance(value, float) else "stringValue")
        return {"key": key, "value": {kind: str(value) if kind == "intValue" else value}}

    def run(i: int) -> list[dict]:
        trace = f"{rng.getrandbits(128):032x}"
        root_id = f"{rng.getrandbits(64):016x}"
        t0 = 1_750_000_000_000_000_000 + i * 10_000_000_000
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        got = a + b + (rng.random() < 0.3) * rng.randint(1, 9)
        out: list[dict] = []
        for n, step in enumerate(("solve", "format")):
            step_id, chat_id = f"{rng.getrandbits(64):016x}", f"{rng.getrandbits(64):016x}"
            start = t0 + n * 1_000_000_000
            messages = json.dumps([{"role": "user", "parts": [
                {"type": "text", "content": f"{prompt}What is {a}+{b}? ({step})"}]}])
            answer = json.dumps([{"role": "assistant", "parts": [
                {"type": "text", "content": f"{worked}The answer is {got}."}],
                "finish_reason": "stop"}])
            out.append({"traceId": trace, "spanId": chat_id, "parentSpanId": step_id,
                        "name": "chat qwen", "kind": 3, "startTimeUnixNano": str(start + 1000),
                        "endTimeUnixNano": str(start + 900_000_000), "status": {},
                        "attributes": [attr("gen_ai.operation.name", "chat"),
                                       attr("gen_ai.request.model", "qwen"),
                                       attr("gen_ai.usage.input_tokens", rng.randint(20, 200)),
                                       attr("gen_ai.usage.output_tokens", rng.randint(5, 80)),
                                       attr("gen_ai.input.messages", messages),
                                       attr("gen_ai.output.messages", answer)]})
            out.append({"traceId": trace, "spanId": step_id, "parentSpanId": root_id,
                        "name": f"math.{step}", "kind": 1, "startTimeUnixNano": str(start),
                        "endTimeUnixNano": str(start + 950_000_000), "status": {}})
        passed = got == a + b
        out.append({"traceId": trace, "spanId": root_id, "name": "invoke_workflow math",
                    "kind": 1, "startTimeUnixNano": str(t0),
                    "endTimeUnixNano": str(t0 + 2_000_000_000), "status": {},
                    "attributes": [attr("gen_ai.operation.name", "invoke_workflow"),
                                   attr("gen_ai.workflow.name", "math")],
                    "events": [{"name": "gen_ai.evaluation.result",
                                "timeUnixNano": str(t0 + 2_000_000_000), "attributes": [
                                    attr("gen_ai.evaluation.name", "exact_match"),
                                    attr("gen_ai.evaluation.score.label",
                                         "pass" if passed else "fail"),
                                    attr("gen_ai.evaluation.explanation",
                                         f"expected {a + b}, got {got}")]}]})
        return out

    pending: list[dict] = []
    made = i = 0
    while made < spans:
        pending += run(i)[: spans - made]
        made = min(spans, made + 5)
        i += 1
        if len(pending) >= per_line or made >= spans:
            line, pending = pending[:per_line], pending[per_line:]
            yield json.dumps({"resourceSpans": [{"resource": {"attributes": [
                attr("service.name", "math-service")]}, "scopeSpans": [
                {"scope": {"name": "opentelemetry.util.genai.handler"}, "spans": line}]}]},
                separators=(",", ":")).encode()
    while pending:
        line, pending = pending[:per_line], pending[per_line:]
        yield json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": line}]}]}).encode()


@app.command("ingest")
def bench_ingest(spans: Annotated[int, typer.Option("--spans")] = 200_000,
                 shape: Annotated[str, typer.Option(help="synthetic (short messages) | real "
                                                         "(message content, ~1.9 KB a span)")
                                  ] = "synthetic",
                 as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Ingest `spans` generated GenAI spans (OTLP/JSON file, 50 spans a line) into a
    temporary home: runs, spans, failures, source spans, gate per batch (no modes); print
    spans/s, MB/s, CPU seconds and the process's peak RSS."""
    from cegraph.storage import Warehouse
    from cegraph.tasks.ingest import Ingestor

    if shape not in ("synthetic", "real"):
        raise typer.BadParameter("--shape: synthetic or real")

    def ingest(home: Path, path: Path) -> dict:
        with Warehouse(home) as wh:
            ingestor = Ingestor(wh, inputs=[str(path)])
            ingestor.feed_file(str(path))
            return ingestor.finish().summary

    with tempfile.TemporaryDirectory() as tmp:
        path, warm = Path(tmp) / "traces.jsonl", Path(tmp) / "warm.jsonl"
        for target, count in ((path, spans), (warm, 500)):
            with target.open("wb") as f:
                for line in genai_lines(count, seed=count, real=shape == "real"):
                    f.write(line + b"\n")
        # one-time start costs (GX, litellm's import behind the failure classes) are not
        # throughput: a small ingest into another home pays them first
        ingest(Path(tmp) / "warm", warm)
        streaming_gc()
        started, cpu = time.perf_counter(), time.process_time()
        s = ingest(Path(tmp) / "home", path)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        size_mb = path.stat().st_size / 1e6
    figures = {"spans": spans, "shape": shape, "file_mb": round(size_mb, 1),
               "bytes_per_span": round(size_mb * 1e6 / spans), "wall_s": round(wall, 2),
               "spans_per_s": round(spans / wall), "mb_per_s": round(size_mb / wall, 1),
               # CPU seconds (all threads): what the figures are on a machine shared with
               # other work, where wall time measures the neighbours too
               "cpu_s": round(cpu, 2), "spans_per_cpu_s": round(spans / cpu),
               "runs_stored": s["runs_stored"],
               "spans_stored": s["spans_stored"], "peak_rss_mb": round(_peak_rss_mb())}
    render.grid(list(figures), [list(figures.values())], title="ingest")
    if as_json:
        print(json.dumps(figures))


# --- refinement against its baselines -------------------------------------------------------
@app.command("refine")
def bench_refine(dataset: Annotated[str, typer.Option("--dataset", "-d")] = "gsm8k",
                 methods: Annotated[str, typer.Option(
                     help="comma-separated: cegraph, scalar, random, gepa")
                 ] = "cegraph,scalar,random",
                 budget: Annotated[int, typer.Option(help="LLM calls per method (seed "
                                                          "evaluation included)")] = 300,
                 dev: Annotated[int, typer.Option()] = 30,
                 test: Annotated[int, typer.Option()] = 40,
                 model: Model = "qwen2.5-coder-0.5b",
                 proposer_model: Annotated[str | None, typer.Option()] = None,
                 references: Annotated[str, typer.Option(
                     help="static reference workflows scored on the test set too (io, cot, "
                          "cot-sc, pot; '' for none)")] = "",
                 alpha: float = 0.05, patience: int = 2, concurrency: int | None = None,
                 counterexamples: Counterexamples = 12,
                 max_break_rate: MaxBreakRate = 0.1,
                 seed: int = 0,
                 data_dir: DataPath = None,
                 home: Annotated[Path | None, typer.Option(
                     help="keep the warehouse here (default: a temporary home)")] = None,
                 as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Refine the dataset's seed with each method at the same call budget on a dev set, then
    score seed and refined versions on a disjoint test set the loop never saw. Each method is
    charged for every call it needs, replayed or not, so sharing one call store is fair.
    Per method: test accuracy, cost per run relative to the seed (calls, tokens), the paired
    p (exact sign test on the test set's discordant pairs, refined vs seed), and every
    verdict of its refinement (decision, adjusted p, interval of the mass drop, cost)."""
    from cegraph.benchmarks import load
    from cegraph.cli.refining import progress_line
    from cegraph.evaluators import evaluate
    from cegraph.executor import Executor, stable_run_id
    from cegraph.llm import LLM
    from cegraph.local_model import MODELS, fetch
    from cegraph.refine.acceptance import decision_counts, discordant, sign_test
    from cegraph.refine.baselines import reference
    from cegraph.refine.cost import CostPerRun, ratios
    from cegraph.refine.loop import Budget, Refinement
    from cegraph.refine.loop import Settings as RefineSettings
    from cegraph.refine.splits import dev_test
    from cegraph.seeds import seed as seed_workflow
    from cegraph.storage import Warehouse
    from cegraph.storage.refinement import RefinementJournal

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    if bad := [m for m in chosen if m not in ("cegraph", "scalar", "random", "gepa")]:
        raise typer.BadParameter(f"unknown method(s) {', '.join(bad)}; use cegraph, scalar, "
                                 "random, gepa")
    split = dev_test(load(dataset, path=data_dir), dev=dev, test=test, seed=seed)
    for name in {model, proposer_model} & set(MODELS):
        fetch(name, progress=render.console.print)
    wf = seed_workflow(dataset)
    with contextlib.ExitStack() as stack:
        root = home or Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="cegraph-bench-refine-")))
        wh = stack.enter_context(Warehouse(root))
        llm = LLM(model, store=wh, concurrency=concurrency)
        proposer = LLM(proposer_model, store=wh) if proposer_model else None

        def score(version: object) -> tuple[dict[str, float], list]:
            started = time.perf_counter()
            before = llm.meter.calls
            with render.progress(len(split.test), f"test set, {version.version_id}",
                                 lambda: llm.meter.tokens_out) as progress:
                traces = asyncio.run(Executor(llm, concurrency=concurrency).run_many(
                    version, list(split.test), evaluate=evaluate, on_done=progress.run_done,
                    run_id=lambda t: stable_run_id(version.version_id, llm.identity, t.id)))
            wh.record_traces(traces, night_id="bench-refine-test", source="benchmark",
                             dataset=dataset, model=llm.identity)
            passed = sum(1 for t in traces if t.outcome and t.outcome.passed)
            return {"accuracy": round(passed / max(1, len(traces)), 4),
                    "calls": llm.meter.calls - before,
                    "wall_s": round(time.perf_counter() - started, 1)}, traces

        def against_seed(traces: list) -> dict[str, object]:
            """Cost per run relative to the seed and the paired p, on the test set."""
            cost = ratios(CostPerRun.of(traces), CostPerRun.of(seed_traces))
            fixed, broken = discordant(seed_traces, traces)
            return {"calls_ratio": round(cost["calls"], 3),
                    "tokens_ratio": round(cost["tokens"], 3), "test_fixed": fixed,
                    "test_broken": broken, "paired_p": round(sign_test(fixed, broken), 4)}

        rows: list[dict[str, object]] = []
        seed_test, seed_traces = score(wf)
        for method in chosen:
            render.console.print(f"refining with {method} (budget {budget} calls)")
            if method == "gepa":  # the peer: GEPA's prompt evolution, same dev roles and calls
                from cegraph.refine.gepa_baseline import optimize_workflow

                got = optimize_workflow(wf, list(split.dev), llm=llm, reflection_llm=proposer,
                                        budget_calls=budget, seed=seed,
                                        concurrency=concurrency, charge_since=0.0,
                                        on_progress=render.console.print)
                refined, traces = score(got.workflow)
                rows.append({"method": method, "seed_test_acc": seed_test["accuracy"],
                             "refined_test_acc": refined["accuracy"], **against_seed(traces),
                             "mass_before": round(1 - got.val_score_before, 3),
                             "mass_after": round(1 - got.val_score_after, 3),
                             "llm_calls": got.llm_calls, "tokens": got.tokens,
                             "wall_s": round(got.wall_s, 1),
                             "accepted_edits": f"{len(got.diff)} prompt(s)" if got.diff
                             else "-", "verification_saving": None,
                             "version": got.workflow.version_id, "stop_reason": got.stop_reason,
                             "decisions": f"{got.candidates} candidates, "
                                          f"{got.reflection_calls} reflections",
                             "verdicts": []})
                continue
            run = Refinement(wf, list(split.dev), llm=llm, proposer_llm=proposer,
                             budget=Budget(calls=budget),
                             settings=RefineSettings(method=method, alpha=alpha,
                                                     max_break_rate=max_break_rate,
                                                     counterexamples=counterexamples,
                                                     patience=patience, seed=seed,
                                                     concurrency=concurrency,
                                                     remember=False),
                             journal=RefinementJournal(wh, dataset=dataset,
                                                       model=llm.identity),
                             charge_since=0.0)
            with progress_line(budget, lambda m=run.meter: m.generated_tokens_out) as show:
                run.on_progress = show
                result = asyncio.run(run.run())
            refined, traces = score(result.workflow)
            rows.append({"method": method, "seed_test_acc": seed_test["accuracy"],
                         "refined_test_acc": refined["accuracy"], **against_seed(traces),
                         "mass_before": round(result.mass_before, 3),
                         "mass_after": round(result.mass_after, 3),
                         "llm_calls": result.llm_calls, "tokens": result.tokens,
                         "wall_s": round(result.wall_s, 1),
                         "accepted_edits": ",".join(a.op for a in result.accepted) or "-",
                         "verification_saving": round(result.verification_saving, 3),
                         "version": result.workflow.version_id,
                         "stop_reason": result.stop_reason,
                         "decisions": decision_counts([d for _, _, d in result.verdicts]),
                         "verdicts": [{"edit_id": eid, "op": op, "decision": d.decision,
                                       "p_value": round(d.p_value, 4),
                                       "p_adjusted": None if d.p_adjusted is None
                                       else round(d.p_adjusted, 4),
                                       "ci": [round(d.ci_low, 4), round(d.ci_high, 4)],
                                       "cost_ratios": {k: round(r, 3) for k, r
                                                       in d.cost_ratios.items()},
                                       "reason": d.reason}
                                      for eid, op, d in result.verdicts]})
        for name in [r.strip() for r in references.split(",") if r.strip()]:
            ref, traces = score(reference(name))
            rows.append({"method": f"ref:{name}", "seed_test_acc": seed_test["accuracy"],
                         "refined_test_acc": ref["accuracy"], **against_seed(traces),
                         "mass_before": None,
                         "mass_after": None, "llm_calls": ref["calls"], "tokens": None,
                         "wall_s": ref["wall_s"], "accepted_edits": "-",
                         "verification_saving": None, "version": reference(name).version_id,
                         "stop_reason": "", "decisions": "-", "verdicts": []})
    columns = [c for c in rows[0] if c not in ("verdicts", "decisions")] if rows else []
    render.grid(columns + ["verdicts"],
                [[r[c] for c in columns] + [r["decisions"]] for r in rows],
                title=f"bench refine: {dataset}, {model}, dev {len(split.dev)}, test "
                      f"{len(split.test)}, budget {budget} calls")
    if as_json:
        print(json.dumps({"dataset": dataset, "model": model, "dev": len(split.dev),
                          "test": len(split.test), "budget": budget, "alpha": alpha,
                          "counterexamples": counterexamples,
                          "max_break_rate": max_break_rate, "rows": rows}))



# --- a night fanned out over Dask workers ---------------------------------------------------
@contextlib.contextmanager
def _scripted_server(latency_s: float) -> Iterator[str]:
    """An OpenAI-compatible server on loopback answering with `night_world` after
    `latency_s` (a hosted model's latency, without its cost); yields its api_base."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cegraph.cli.plus_one import night_world

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(latency_s)
            text = night_world(body["messages"])
            out = json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                              "model": body["model"], "choices": [{
                                  "index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": text}}],
                              "usage": {"prompt_tokens": 50, "completion_tokens": 10,
                                        "total_tokens": 60}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


@contextlib.contextmanager
def _prefect_api() -> Iterator[None]:
    """One Prefect API for the flows and every Dask worker: with none configured each worker
    starts an ephemeral server of its own (the task runs' context carries the flow's
    settings), which timed out on the loaded 2-core machine."""
    import prefect.settings as ps
    from prefect.server.api.server import SubprocessASGIServer

    if ps.PREFECT_API_URL.value():
        yield
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    server = SubprocessASGIServer()  # this process's ephemeral server: started once
    ours = not server.running
    server.start(timeout=180)
    try:
        with ps.temporary_settings({ps.PREFECT_API_URL: server.api_url}):
            try:
                yield
            finally:
                # delivered before the server stops: events left queued for a stopped
                # server made the next drain in this process (a later flow, a test
                # harness) wait forever
                APILogWorker.drain_all(timeout=30)
                EventsWorker.drain_all(timeout=30)
    finally:
        if ours:
            server.stop()


@app.command("night")
def bench_night(runner: Annotated[str, typer.Option(help="threads | dask")] = "dask",
                workers: Annotated[int, typer.Option(help="Dask worker processes")] = 2,
                inputs: Annotated[int, typer.Option(help="logged inputs")] = 40,
                chunk: Annotated[int, typer.Option(help="inputs per run-chunk task")] = 4,
                latency_ms: Annotated[float, typer.Option(
                    help="the scripted model's latency per call")] = 0.0,
                model: Annotated[str | None, typer.Option(
                    help="a local model (e.g. smollm2-135m) the nights call instead of the "
                         "scripted one: in-process here, served on the engine's loopback "
                         "listener to the workers")] = None,
                max_tokens: Annotated[int | None, typer.Option(
                    help="cap the workflow's nodes at this many tokens a call")] = None,
                as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The same night (the seed math workflow, `inputs` logged runs, a scripted model
    served over HTTP on loopback, or `--model`) in-process and fanned out as run-chunk tasks
    on `runner` (a temporary Dask cluster of `workers` processes): wall time of each, the
    runs the night made, the model's latency per call, and the fan-out's overhead per run
    and per task."""
    import os

    from cegraph.evaluator_spec import EvaluatorSpec
    from cegraph.evaluators import evaluate
    from cegraph.executor import Executor
    from cegraph.flows.nightly import night_flow
    from cegraph.graph import Workflow
    from cegraph.llm import LLM
    from cegraph.local_model import MODELS
    from cegraph.seeds import seed
    from cegraph.storage import Warehouse
    from cegraph.storage.registry import Registry
    from cegraph.tasks import batch

    if runner not in ("threads", "dask"):
        raise typer.BadParameter("--runner: threads or dask")
    if model is not None and model not in MODELS:
        raise typer.BadParameter(f"--model: a local model ({', '.join(MODELS)})")
    workflow = seed("math")
    if max_tokens is not None:
        short = workflow.model_dump(exclude_defaults=True)
        for node in short["nodes"]:
            node["params"] = {**node.get("params", {}), "max_tokens": max_tokens}
        workflow = Workflow.from_dict(short)
    rows = []
    os.environ.setdefault("OPENAI_API_KEY", "none")
    with _scripted_server(latency_ms / 1000) as api_base, \
            tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        stack.enter_context(_prefect_api())
        address, cluster_s = None, 0.0
        if runner == "dask":  # started once, as a standing cluster is: not a night's cost
            from distributed import LocalCluster

            started = time.perf_counter()
            address = stack.enter_context(LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True,
                dashboard_address=None)).scheduler_address
            cluster_s = time.perf_counter() - started
        # each runner's first night pays one-time costs (imports, the engine's load, a
        # worker's first chunk): a warm-up night on other inputs, then the timed one
        for name, timed in (("local", False), ("local", True), (runner, False),
                            (runner, True)):
            home = Path(tmp) / f"{name}-{timed}"
            # a small model gets small sums right: from 1000 on its night has work to do
            first = (1000 if model else 0) + (0 if timed else 1000)
            tasks = [Task(f"p{i}", "production", f"What is {first + i} + 1?",
                          str(first + i + 1), metadata={"kind": "math"})
                     for i in range(inputs)]
            with Warehouse(home) as wh:  # production's logs come from the scripted model
                Registry(wh).register(workflow, evaluator=EvaluatorSpec(kind="numeric"))
                llm = LLM("openai/bench", api_base=api_base)
                traces = asyncio.run(Executor(llm).run_many(
                    workflow, tasks, evaluate=evaluate, run_id=lambda t: f"prod-{t.id}"))
                wh.record_traces(traces, night_id="ingest", source="production",
                                 dataset="production", model=llm.identity)
            submitted = batch.SUBMITTED
            started = time.perf_counter()
            [night] = night_flow(name, address=address, workers=workers)(
                home=str(home), model=model or "openai/bench",
                api_base=None if model else api_base, runner=name, chunk=chunk,
                budget_calls=2000, max_latency_ratio=1e9, max_inputs=inputs)["nights"]
            wall = time.perf_counter() - started
            with Warehouse(home, read_only=True) as wh:
                [(runs,)] = wh.rows("SELECT count(*) FROM runs WHERE source <> 'production'")
                [(latency,)] = wh.rows("SELECT coalesce(avg(latency_s), 0) FROM llm_calls "
                                       "WHERE model <> 'openai/bench' OR ?", [model is None])
            if not timed:
                continue
            rows.append({"runner": name, "workers": workers if name == "dask" else 1,
                         "decision": night["decision"], "runs": runs,
                         "calls": night["cost"]["calls"],
                         "tasks": batch.SUBMITTED - submitted,
                         "s_per_call": round(latency, 3), "wall_s": round(wall, 2)})
    local, fanned = rows
    extra = fanned["wall_s"] - local["wall_s"]
    figures = {"inputs": inputs, "chunk": chunk, "model": model or "scripted",
               "latency_ms": None if model else latency_ms, "max_tokens": max_tokens,
               "nights": rows, "cluster_start_s": round(cluster_s, 2),
               "overhead_per_run_s": round(extra / max(1, fanned["runs"]), 4),
               "overhead_per_task_s": round(extra / max(1, fanned["tasks"]), 4)}
    render.grid(list(rows[0]), [list(r.values()) for r in rows], title="night")
    render.console.print(f"fan-out overhead: {figures['overhead_per_run_s']} s a run, "
                         f"{figures['overhead_per_task_s']} s a task")
    if as_json:
        print(json.dumps(figures))
