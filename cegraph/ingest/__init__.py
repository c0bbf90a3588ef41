"""Production traces -> cegraph runs, pure parsing (no storage, no Prefect):

- `lines`: input files, globs, stdin, gzip, one line at a time;
- `otlp`: OTLP/JSON and protobuf canonical JSON (traces and logs), protobuf bodies;
- `genai`, `openinference`, `conventions`: what a span means under each convention;
- `jsonl`: cegraph's own run format (JSON Schema: `run.schema.json`);
- `staging`: traces split across lines and files;
- `mapping`: the per-workflow TOML mapping; `assemble`: spans -> a run;
- `accounting`: stored / duplicate / quarantined, with reasons; `unmapped`: keys not mapped;
- `pipeline`: the streaming core; `gate`: the Great Expectations gate on every batch;
- `receiver`: the OTLP/HTTP receiver (`cegraph collect`).
"""
