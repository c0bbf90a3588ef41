"""Settings: defaults < `[tool.cegraph]` in ./pyproject.toml or ./cegraph.toml < env
`CEGRAPH_<FIELD>` < command-line options."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from cegraph.fss.recipe import DEFAULT_RECIPE
from cegraph.fss.signature import DEFAULT_LOCUS_WEIGHT
from cegraph.local_model import DEFAULT_MODEL


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    home: str = ".cegraph"
    model: str = DEFAULT_MODEL
    data_dir: str | None = None
    concurrency: int | None = None  # None: the model's engine slots (cegraph.engine)
    locus_weight: float = DEFAULT_LOCUS_WEIGHT
    signature_recipe: str = DEFAULT_RECIPE  # see cegraph.fss.recipe
    diagnosis_model: str | None = None  # None: the run's model

    @classmethod
    def load(cls, cwd: Path | None = None) -> Settings:
        cwd = cwd or Path.cwd()
        values: dict[str, object] = {}
        if (cwd / "cegraph.toml").exists():
            values.update(tomllib.loads((cwd / "cegraph.toml").read_text()))
        elif (cwd / "pyproject.toml").exists():
            tool = tomllib.loads((cwd / "pyproject.toml").read_text()).get("tool", {})
            values.update(tool.get("cegraph", {}))
        for name in cls.model_fields:
            env = os.environ.get(f"CEGRAPH_{name.upper()}")
            if env is not None:
                values[name] = env
        return cls.model_validate(values)
