"""Command-line options shared by several commands (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cegraph.config import ConfigError, Settings

try:  # the defaults of every option; a bad config file must not break `--help`
    SETTINGS, CONFIG_ERROR = Settings.load(), None
except ConfigError as _exc:
    SETTINGS, CONFIG_ERROR = Settings(), _exc

Home = Annotated[Path, typer.Option("--home", envvar="CEGRAPH_HOME",
                                    help="Project home holding the warehouse.")]
Model = Annotated[str, typer.Option("--model", "-m", help="Local model name (qwen2.5-coder-1.5b, "
                                    "qwen2.5-coder-0.5b, smollm2-135m) or a litellm model string.")]
DataPath = Annotated[str | None, typer.Option(
    "--data", "--data-dir", help="A JSONL file, or a folder of {dataset}_validate.jsonl files "
    "(default: the splits packaged with cegraph, or $CEGRAPH_DATA_DIR).")]
AsJson = Annotated[bool, typer.Option("--json", help="print the result as JSON (last line)")]
#: The acceptance rule's sample and regression limit, shared by `refine` and `bench refine`.
Counterexamples = Annotated[int, typer.Option(
    help="target-mode counterexamples each candidate is verified on")]
MaxBreakRate = Annotated[float, typer.Option(
    help="largest share of the regression sample an accepted edit may break")]
