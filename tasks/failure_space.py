"""Signatures into the catalog and LanceDB, modes and mass into `nights`/`failure_modes`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cegraph.fss.contrast import reference_solutions, reference_tests
from cegraph.fss.diagnosis import diagnose_pool, kind_label
from cegraph.fss.failure_space import Analysis, analyze_failures
from cegraph.fss.finding import mode_kind, read_failures
from cegraph.fss.mode_label import llm_label
from cegraph.fss.recipe import (
    DEFAULT_RECIPE,
    READS_STEPS,
    apply_recipe,
    uses_contrastive_diagnosis,
    uses_diagnosis,
)
from cegraph.fss.signature import DEFAULT_LOCUS_WEIGHT, MiniLMEmbedder, SignatureBuilder
from cegraph.fss.steps import sandbox_runner
from cegraph.llm import LLM, Meter
from cegraph.storage import Warehouse
from cegraph.storage.digests import passing_solutions, run_digests


@task(name="analyze-failures", cache_policy=NO_CACHE)
def analyze_and_store(home: str | None, *, workflow: str, version_id: str, night_id: str,
                      model: str, dataset: str, source: str,
                      locus_weight: float = DEFAULT_LOCUS_WEIGHT,
                      label_model: str | None = None, recipe: str = DEFAULT_RECIPE,
                      diagnosis_model: str | None = None,
                      meter: Meter | None = None) -> Analysis:
    """Embed the pool of (workflow, version, model, dataset) (cache first), index it, find
    and store its modes, matched to the last night of the same (workflow, model, dataset)
    and signature `recipe`; with `label_model`, an LLM also names each mode (kept only when
    its answer parses). Under the diagnosis recipe, `diagnosis_model` diagnoses each failure
    not diagnosed before (spending from `meter`), and modes are labelled by their kinds.
    Opens the warehouse at `home` for its own work (the flow passes the path, not a
    handle)."""
    with Warehouse(Path(home) if home else None) as wh:
        return _analyze(wh, workflow=workflow, version_id=version_id, night_id=night_id,
                        model=model, dataset=dataset, source=source,
                        locus_weight=locus_weight, label_model=label_model, recipe=recipe,
                        diagnosis_model=diagnosis_model, meter=meter)


def _analyze(wh: Warehouse, *, workflow: str, version_id: str, night_id: str, model: str,
             dataset: str, source: str, locus_weight: float, label_model: str | None,
             recipe: str, diagnosis_model: str | None, meter: Meter | None) -> Analysis:
    log = get_run_logger()
    failures = wh.failures(workflow, version_id, model=model, dataset=dataset)
    runs = wh.run_count(workflow, version_id, model=model, dataset=dataset)
    diagnoses = {}
    if uses_diagnosis(recipe) and diagnosis_model:
        solutions = reference_solutions(dataset) if uses_contrastive_diagnosis(recipe) else {}
        done = diagnose_pool(failures, LLM(diagnosis_model, store=wh, meter=meter), wh,
                             lambda fs: run_digests(wh, fs),
                             right={f.failure_id: solutions[f.task_id] for f in failures
                                    if f.task_id in solutions}
                             if uses_contrastive_diagnosis(recipe) else None)
        diagnoses = done.records
        log.info("diagnosis: %d failures diagnosed with %d paid calls in %.1fs",
                 done.diagnosed, done.calls, done.seconds)
    readings = {}
    if recipe in READS_STEPS:
        ids = [f.failure_id for f in failures]
        solutions = reference_solutions(dataset)
        solutions |= passing_solutions(wh, dataset, [f.task_id for f in failures
                                                     if f.task_id not in solutions])
        readings = read_failures(run_digests(wh, failures), solutions,
                                 stored=wh.failure_step_findings(ids), run=sandbox_runner,
                                 tests=reference_tests(dataset))
    seen, texts = apply_recipe(failures, recipe,
                               features=wh.failure_features([f.failure_id for f in failures]),
                               diagnoses=diagnoses, readings=readings)
    findings = {i: f for i, r in readings.items() if (f := r.finding()) is not None}
    builder = SignatureBuilder(MiniLMEmbedder(), cache=wh, locus_weight=locus_weight)
    analysis = analyze_failures(
        seen, runs, builder, texts=texts,
        previous=wh.previous_modes(workflow, model=model, dataset=dataset, recipe=recipe),
        used_ids=wh.mode_ids(workflow))
    added = wh.record_signatures(seen, analysis.signatures,
                                 embedding_model=builder.embedder.name,
                                 locus_weight=locus_weight, recipe=recipe)
    for mode in analysis.modes:
        mode.kind_label = (kind_label(mode.failure_ids, mode.representative_ids, diagnoses)
                           or mode_kind(mode.failure_ids, findings))
    if label_model:
        messages = {f.failure_id: f.message for f in failures}
        llm = LLM(label_model, store=wh)

        async def label_all() -> None:
            for mode in analysis.modes:
                await llm_label(mode, [messages[i] for i in mode.representative_ids], llm)

        asyncio.run(label_all())
    m = analysis.mass.total
    wh.record_night(night_id=night_id, workflow=workflow, version_id=version_id, model=model,
                    dataset=dataset, source=source, runs=runs,
                    modes=analysis.modes, resolved=analysis.resolved,
                    noise_ids=analysis.noise_ids, mass=(m.mass, m.lo, m.hi), recipe=recipe)
    log.info("%d failures / %d runs (recipe %s): mass %.3f [%.3f, %.3f], %d modes, %d noise, "
             "%d new vectors", len(failures), runs, recipe, m.mass, m.lo, m.hi,
             len(analysis.modes), len(analysis.noise_ids), added)
    return analysis
