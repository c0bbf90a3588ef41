"""`cegraph bench failures` and `cegraph bench signatures`: the stored failures of a home
printed for hand labelling, and each signature recipe measured against those labels."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from cegraph.cli import render
from cegraph.cli.bench import app
from cegraph.cli.options import Home

LABELS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "failure_labels.jsonl"


def _pools(wh: Any, dataset: str | None) -> list[tuple[str, str, str, str]]:
    """Every (workflow, version, model, dataset) with failures, optionally one dataset."""
    return [tuple(r) for r in wh.rows(
        "SELECT DISTINCT workflow, version_id, model, dataset FROM failures WHERE "
        "(?::VARCHAR IS NULL OR dataset = ?) ORDER BY dataset, workflow, version_id, model",
        [dataset, dataset])]


def _open(home: Path, *, read_only: bool) -> Any:
    from cegraph.storage import Warehouse

    if not (home / "catalog.duckdb").exists():
        raise typer.BadParameter(f"no catalog at {home}; run `cegraph evaluate --dataset gsm8k "
                                 f"--n 100 --home {home}` first")
    return Warehouse(home, read_only=read_only)


@app.command("failures")
def bench_failures(home: Home = Path(".cegraph"),
                   dataset: Annotated[str | None, typer.Option("--dataset", "-d")] = None,
                   as_json: Annotated[bool, typer.Option("--json", help="one JSON object a "
                                                         "line")] = False) -> None:
    """Print every stored failure with its trace for hand labelling: ids, question, each
    node's output, expected vs. got, and its trace features."""
    from cegraph.fss.contrast import reference_solutions, reference_tests
    from cegraph.fss.features import trace_features
    from cegraph.fss.finding import read_failures
    from cegraph.fss.steps import sandbox_runner
    from cegraph.storage.digests import passing_solutions, run_digests

    with _open(home, read_only=True) as wh:
        for workflow, version, model, ds in _pools(wh, dataset):
            failures = wh.failures(workflow, version, model=model, dataset=ds)
            digests = run_digests(wh, failures)
            solutions = reference_solutions(ds)
            solutions |= passing_solutions(wh, ds, [f.task_id for f in failures
                                                    if f.task_id not in solutions])
            readings = read_failures(digests, solutions, run=sandbox_runner,
                                     tests=reference_tests(ds))
            for f in failures:
                d = digests.get(f.failure_id)
                reading = readings.get(f.failure_id)
                check = reading.steps if reading else None
                contrast = reading.contrast if reading else None
                found = reading.finding() if reading else None
                nodes = [{"node": n.node_id, "operator": n.operator, "output": n.text,
                          "truncated": n.truncated, "error": n.error}
                         for n in (d.nodes if d else ())]
                record = {"dataset": ds, "task_id": f.task_id, "failure_id": f.failure_id,
                          "workflow": workflow, "class": f.failure_class,
                          "locus": f.locus_node, "question": d.question if d else "",
                          "nodes": nodes, "expected": f.expected, "got": f.observed,
                          "message": f.message,
                          "features": trace_features(d).text if d else "",
                          "steps": check.row() if check else {},
                          "contrast": contrast.row() if contrast else {},
                          "finding": found.key if found else None}
                if as_json:
                    print(json.dumps(record, ensure_ascii=False))
                    continue
                print(f"=== {ds} {f.task_id} ({f.failure_id}) [{f.failure_class}] at "
                      f"{f.locus_node}\nQUESTION: {record['question']}")
                for n in nodes:
                    flags = (" [cut at token limit]" if n["truncated"] else "") + (
                        f" [raised {n['error']}]" if n["error"] else "")
                    print(f"--- {n['node']} ({n['operator']}){flags}\n{n['output']}")
                print(f"EXPECTED: {f.expected}\nGOT: {f.observed}\nMESSAGE: {f.message}\n"
                      f"FEATURES: {record['features']}")
                if check and check.findings:
                    print(f"STEPS: {', '.join(check.findings)}" + "".join(
                        f"; {k} {v}" for k, v in check.row().items() if v is not None
                        and k in ("first_wrong_step", "code_claimed", "code_result")))
                if contrast:
                    print(f"CONTRAST: {contrast.text}" + "".join(
                        f"; {k.removeprefix('contrast_')} {v}" for k, v in
                        contrast.row().items() if v is not None and k != "contrast"))
                if found:
                    print(f"FINDING: {found.words}")
                print()


def load_labels(path: Path) -> dict[tuple[str, str], str]:
    """Hand labels by (dataset, task_id) from a JSONL file of {dataset, task_id, label}."""
    labels = {}
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            labels[(row["dataset"], row["task_id"])] = row["label"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise typer.BadParameter(f"{path}:{i}: expected a JSON object with dataset, "
                                     f"task_id and label ({exc})") from None
    return labels


def agreement(modes: Sequence[Any], noise: Sequence[str], labelled: dict[str, str]) -> float:
    """Adjusted Rand index between the modes and the hand labels on the labelled failures;
    each noise failure is a cluster of its own (it was grouped with nothing)."""
    from sklearn.metrics import adjusted_rand_score

    cluster = {fid: m.mode_id for m in modes for fid in m.failure_ids}
    cluster |= {fid: f"noise:{fid}" for fid in noise}
    ids = [i for i in labelled if i in cluster]
    if len(ids) < 2:
        return float("nan")
    return float(adjusted_rand_score([labelled[i] for i in ids], [cluster[i] for i in ids]))


@app.command("signatures")
def bench_signatures(
        home: Home = Path(".cegraph"),
        labels: Annotated[Path, typer.Option(help="hand labels (JSONL)")] = LABELS,
        dataset: Annotated[str | None, typer.Option("--dataset", "-d")] = None,
        recipes: Annotated[str, typer.Option(help="comma-separated recipes")] = (
            "message,message+features,steps,steps+contrast,message+steps+contrast,"
            "message+features+diagnosis"),
        diagnosis_model: Annotated[str | None, typer.Option(
            help="diagnosing model (default: the pool's own model)")] = None,
        as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """For each pool of the home and each signature recipe: modes, share of failures in
    modes vs. noise, adjusted Rand index against the hand labels, and the diagnosis cost
    (paid calls and seconds per failure). Diagnoses are kept in the home, so a second run
    pays nothing."""
    from cegraph.fss.contrast import reference_solutions, reference_tests
    from cegraph.fss.diagnosis import diagnose_pool
    from cegraph.fss.features import trace_features
    from cegraph.fss.finding import mode_kind, read_failures
    from cegraph.fss.modes import find_modes
    from cegraph.fss.recipe import (
        READS_STEPS,
        apply_recipe,
        check_recipe,
        uses_contrastive_diagnosis,
        uses_diagnosis,
    )
    from cegraph.fss.signature import MiniLMEmbedder, SignatureBuilder
    from cegraph.fss.steps import sandbox_runner
    from cegraph.llm import LLM
    from cegraph.local_model import LOCAL_PROVIDER, MODELS, fetch
    from cegraph.storage.digests import passing_solutions, run_digests

    chosen = [check_recipe(r.strip()) for r in recipes.split(",") if r.strip()]
    hand = load_labels(labels) if labels.exists() else {}
    embedder = MiniLMEmbedder()
    results = []
    with _open(home, read_only=False) as wh:
        builder = SignatureBuilder(embedder, cache=wh)
        for workflow, version, model, ds in _pools(wh, dataset):
            failures = wh.failures(workflow, version, model=model, dataset=ds)
            digests = run_digests(wh, failures)
            features = {i: trace_features(d).text for i, d in digests.items()}
            solutions = reference_solutions(ds)
            solutions |= passing_solutions(wh, ds, [f.task_id for f in failures
                                                    if f.task_id not in solutions])
            readings = (read_failures(digests, solutions, run=sandbox_runner,
                                      stored=wh.failure_step_findings(list(digests)),
                                      tests=reference_tests(ds))
                        if any(r in READS_STEPS for r in chosen) else {})
            findings = {i: f for i, r in readings.items() if (f := r.finding()) is not None}
            labelled = {f.failure_id: hand[(ds, f.task_id)] for f in failures
                        if (ds, f.task_id) in hand}
            diagnoses, cost = {}, {}
            for wanted in {uses_contrastive_diagnosis(r) for r in chosen
                           if uses_diagnosis(r)}:
                name = diagnosis_model or model.split("@", 1)[0]
                short = name.removeprefix(f"{LOCAL_PROVIDER}/")
                if short in MODELS:
                    fetch(short, progress=render.console.print)
                started = time.perf_counter()
                done = diagnose_pool(failures, LLM(name, store=wh, concurrency=2), wh,
                                     lambda fs: run_digests(wh, fs),
                                     right={f.failure_id: solutions[f.task_id]
                                            for f in failures if f.task_id in solutions}
                                     if wanted else None)
                diagnoses[wanted] = done.records
                per = max(done.diagnosed, 1)
                cost[wanted] = {
                    "diagnosed": done.diagnosed, "diagnosis_calls": done.calls,
                    "diagnosis_calls_per_failure": round(done.calls / per, 3),
                    "diagnosis_s_per_failure": round(done.seconds / per, 2),
                    "diagnosis_wall_s": round(time.perf_counter() - started, 1),
                    "diagnoses_valid": sum(r.valid for r in done.records.values()),
                    "diagnoses": len(done.records)}
            for recipe in chosen:
                diagnosed = uses_contrastive_diagnosis(recipe)
                seen, texts = apply_recipe(failures, recipe, features=features,
                                           diagnoses=diagnoses.get(diagnosed, {}),
                                           readings=readings)
                found = find_modes(builder.build(seen, texts))
                wrong = {f.failure_id for f in failures if f.failure_class == "wrong_answer"}
                n = len(failures)
                row = {"dataset": ds, "workflow": workflow, "recipe": recipe,
                       "failures": n, "modes": len(found.modes),
                       "wrong_answer_modes": sum(1 for m in found.modes
                                                 if wrong & set(m.failure_ids)),
                       "in_modes": round(1 - len(found.noise_ids) / n, 3) if n else 0.0,
                       "noise": round(len(found.noise_ids) / n, 3) if n else 0.0,
                       "labelled": len(labelled),
                       "ari": round(agreement(found.modes, found.noise_ids, labelled), 3),
                       "mode_labels": [f"{m.label} ({m.size})" for m in found.modes],
                       "mode_kinds": [mode_kind(m.failure_ids, findings) for m in found.modes]}
                if uses_diagnosis(recipe):
                    row |= cost.get(diagnosed, {})
                results.append(row)
    columns = ["dataset", "recipe", "failures", "modes", "wrong_answer_modes", "in_modes",
               "noise", "labelled", "ari", "diagnosis_calls_per_failure",
               "diagnosis_s_per_failure"]
    render.grid(columns, [[r.get(c, "") for c in columns] for r in results],
                title=f"signature recipes on {home}")
    for r in results:
        render.console.print(f"[bold]{r['dataset']} / {r['recipe']}[/bold]")
        for label, kind in zip(r["mode_labels"], r["mode_kinds"], strict=True):
            render.console.print(f"  {render.escape(label)}"
                                 + (f" - {render.escape(kind)}" if kind else ""))
    if as_json:
        print(json.dumps(results))
