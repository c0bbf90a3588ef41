"""Prefect flows composing the tasks: evaluation (the demo's main job), later ingest and
nightly refinement."""
