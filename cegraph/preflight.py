"""Can this model string be called at all? Checked once, before any task runs, so a typo, a
missing key, a server that is down or a model never fetched is one line saying what to do,
not one recorded exception per input."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

#: Seconds to wait for an api_base to accept a connection.
CONNECT_TIMEOUT_S = 3.0


class ModelUnavailable(RuntimeError):
    """The model string cannot be called; the message says what to do."""


def check_model(model: str, params: Mapping[str, Any] | None = None) -> None:
    """Raise `ModelUnavailable` when `model` (a litellm string or a local model name) cannot
    be called with `params` (the LLM's extra call arguments). Calls with a `mock_response`
    never reach a provider, so they are not checked."""
    params = params or {}
    if "mock_response" in params:
        return
    from cegraph.llm import _litellm
    from cegraph.local_model import LOCAL_PROVIDER, MODELS, model_path

    name = model.removeprefix(f"{LOCAL_PROVIDER}/")
    if name in MODELS:
        if not model_path(name).exists():
            raise ModelUnavailable(f"local model {name!r} is not fetched; run "
                                   f"`cegraph model fetch --model {name}`")
        return
    if model.startswith(f"{LOCAL_PROVIDER}/"):
        raise ModelUnavailable(f"unknown local model {name!r}; choose one of "
                               f"{', '.join(MODELS)}")
    litellm = _litellm()
    prefix = model.split("/", 1)[0]
    if any(p["provider"] == prefix for p in litellm.custom_provider_map):
        return  # a provider registered in this process answers it
    try:
        _, provider, _, default_base = litellm.get_llm_provider(model)
    except Exception:
        raise ModelUnavailable(
            f"cannot tell which provider serves {model!r}; write it as provider/model "
            f"(e.g. openai/gpt-4o-mini, ollama/llama3) or use a local model name "
            f"({', '.join(MODELS)})") from None
    base = (params.get("api_base") or params.get("base_url")
            or os.environ.get(f"{provider.upper()}_API_BASE") or default_base)
    if "api_key" not in params:
        missing = [k for k in litellm.validate_environment(model, api_base=base)["missing_keys"]
                   if not k.endswith(("_API_BASE", "_BASE_URL"))]
        if missing:
            raise ModelUnavailable(f"{model!r} needs {', '.join(missing)}: set it in the "
                                   "environment or pass api_key (any value for a server "
                                   "that checks none)")
    if base:
        _check_reachable(model, base)


def _check_reachable(model: str, url: str) -> None:
    parsed = urlparse(url if "://" in url else f"http://{url}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "localhost", port),
                                      timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ModelUnavailable(f"{model!r}: cannot reach api_base {url} ({exc.strerror or exc}); "
                               "start the server or fix the api_base") from None
