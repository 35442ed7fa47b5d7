"""Model specs of the benchmark scripts: ``kind[:opt=value;opt=value]``."""

from __future__ import annotations

import json


def model_options(spec: str) -> tuple[str, dict]:
    """``"factor_analysis:n_latent=16"`` -> ("factor_analysis", {"n_latent": 16}).

    Values are JSON, except ``init_from`` (a model directory for staged training), which
    is taken as a plain path.
    """
    kind, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        options[key] = value if key == "init_from" else json.loads(value)
    return kind, options


def directory_name(spec: str) -> str:
    """A file-system-safe directory name for a spec."""
    return spec.replace(":", "_").replace(";", "_").replace("=", "").replace("/", "-")
