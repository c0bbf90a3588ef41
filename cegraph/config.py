"""Settings: defaults < `[tool.cegraph]` in ./pyproject.toml or ./cegraph.toml < env
`CEGRAPH_<FIELD>` < command-line options."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cegraph.fss.recipe import DEFAULT_RECIPE
from cegraph.fss.signature import DEFAULT_LOCUS_WEIGHT
from cegraph.local_model import DEFAULT_MODEL


class NightConfig(BaseModel):
    """`[night]`: where a night's batches of runs go (`cegraph.batch`). `local`: here, in
    the flow's process; `threads`: Prefect tasks on the flow's thread pool; `dask`: Prefect
    tasks on a dask.distributed cluster at `dask_address` (none: a temporary local cluster
    of `workers` processes). `chunk`: inputs per task. `api_base`: the OpenAI-compatible
    server every worker calls (none: the model string says; a local model is served to
    the workers from the flow's process on loopback). `forward_env`: environment variables
    the workers need besides the model's key (which is forwarded anyway,
    `cegraph.credentials`), e.g. a provider's region; comma-separated in
    `CEGRAPH_NIGHT_FORWARD_ENV`."""

    model_config = ConfigDict(extra="forbid")

    runner: Literal["local", "threads", "dask"] = "local"
    dask_address: str | None = None
    workers: int = 2
    chunk: int = 4
    api_base: str | None = None
    forward_env: list[str] = Field(default_factory=list)

    @field_validator("forward_env", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        return [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) \
            else value


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    home: str = ".cegraph"
    model: str = DEFAULT_MODEL
    data_dir: str | None = None
    concurrency: int | None = None  # None: the model's engine slots (cegraph.engine)
    locus_weight: float = DEFAULT_LOCUS_WEIGHT
    signature_recipe: str = DEFAULT_RECIPE  # see cegraph.fss.recipe
    diagnosis_model: str | None = None  # None: the run's model
    night: NightConfig = Field(default_factory=NightConfig)

    @classmethod
    def load(cls, cwd: Path | None = None) -> Settings:
        """The settings in force in `cwd`; a bad file or value raises `ConfigError` (one
        line naming the file and the key)."""
        cwd = cwd or Path.cwd()
        values: dict[str, object] = {}
        source = "defaults"
        for name, table in (("cegraph.toml", ()), ("pyproject.toml", ("tool", "cegraph"))):
            path = cwd / name
            if not path.exists():
                continue
            try:
                data = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file") from exc
            # a cegraph.toml may also hold its keys in a pyproject-style [tool.cegraph] table
            for key in table or (("tool", "cegraph") if "tool" in data else ()):
                data = data.get(key, {}) if isinstance(data, dict) else {}
            values.update(data)
            source = str(path)
            break
        for name in cls.model_fields:
            env = os.environ.get(f"CEGRAPH_{name.upper()}")
            if env is not None:
                values[name] = env
        night = dict(values.get("night") or {})  # CEGRAPH_NIGHT_<KEY> for `[night] key`
        for name in NightConfig.model_fields:
            env = os.environ.get(f"CEGRAPH_NIGHT_{name.upper()}")
            if env is not None:
                night[name] = env
        if night:
            values["night"] = night
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            e = exc.errors()[0]
            key = ".".join(map(str, e["loc"]))
            what = (f"unknown setting '{key}' (settings: {', '.join(cls.model_fields)})"
                    if e["type"] == "extra_forbidden" else f"{key}: {e['msg']}")
            raise ConfigError(f"{source}: {what}; fix it or set CEGRAPH_<SETTING>") from exc


class ConfigError(ValueError):
    """A settings file or variable that cannot be read; the message names it."""
