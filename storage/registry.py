"""The model registry on disk: versions, metadata and an atomic CURRENT pointer per model.

Layout (all under ``settings.models_dir`` / ``settings.outputs_dir``)::

    models/<name>/<version>/meta.json   params, metrics, data window, gate verdict
    models/<name>/<version>/model/      the Spark ML PipelineModel (churn, segments)
    models/segments/<version>/names.json        segment id -> name (SEGMENT_NAMES_FILE)
    models/recommendations/<version>/popular.json  the run's popularity list (POPULAR_FILE)
    models/{churn,segments}/<version>/scorer.json   the model as numbers (SCORER_FILE)
    models/<name>/CURRENT               one line: the served version
    outputs/<table>/<version>/          Parquet output tables of that run

``name`` is one of ``recommendations``, ``churn``, ``segments``. ``CURRENT`` is
replaced atomically (``storage.snapshots.write_pointer``: a rename on a disk, one PUT in
an object store), and only
when a version passes its quality gate, so a reader always resolves a complete,
accepted version. This module has no Spark import: streaming and serving read it.
"""

from __future__ import annotations

import json
from typing import Any

from upath import UPath

from runtime.settings import Settings
from storage.objects import write_atomically
from storage.snapshots import POINTER, new_version, write_pointer

MODELS = ("recommendations", "churn", "segments")
TABLES = ("recommendations", "churn_scores", "segments")
# Files kept next to meta.json, written by retrain and read by serving for customers
# first seen after the run. Older versions may lack them.
SEGMENT_NAMES_FILE = "names.json"
POPULAR_FILE = "popular.json"
# The served model's numbers for the NumPy scorers (``scoring``): churn and segments.
SCORER_FILE = "scorer.json"

__all__ = [
    "MODELS",
    "POPULAR_FILE",
    "SCORER_FILE",
    "SEGMENT_NAMES_FILE",
    "TABLES",
    "current_version",
    "model_dir",
    "model_path",
    "new_version",
    "output_path",
    "promote",
    "read_meta",
    "read_scorer",
    "versions",
    "write_meta",
    "write_scorer",
]


def model_dir(settings: Settings, name: str, version: str) -> UPath:
    """The directory of one model version (holds meta.json and model/)."""
    return settings.models_dir / name / version


def model_path(settings: Settings, name: str, version: str) -> UPath:
    """Where the Spark ML PipelineModel of ``name`` at ``version`` is saved."""
    return model_dir(settings, name, version) / "model"


def output_path(settings: Settings, table: str, version: str) -> UPath:
    """The Parquet output table ``table`` written by run ``version``."""
    return settings.outputs_dir / table / version


def current_version(settings: Settings, name: str) -> str | None:
    """The version CURRENT points at for ``name``, or None before the first accepted run."""
    try:
        version = (settings.models_dir / name / POINTER).read_text().strip()
    except FileNotFoundError:
        return None
    return version if (settings.models_dir / name / version).is_dir() else None


def versions(settings: Settings, name: str) -> list[str]:
    """All versions written for ``name`` (accepted or not), oldest first."""
    base = settings.models_dir / name
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and (p / "meta.json").exists())


def write_meta(settings: Settings, name: str, version: str, meta: dict[str, Any]) -> UPath:
    """Write ``meta.json`` of a version (creating its directory)."""
    d = model_dir(settings, name, version)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "meta.json"
    write_atomically(path, json.dumps(meta, indent=2, sort_keys=True, default=str).encode())
    return path


def read_meta(settings: Settings, name: str, version: str) -> dict[str, Any]:
    """The ``meta.json`` of a version."""
    return json.loads((model_dir(settings, name, version) / "meta.json").read_text())


def promote(settings: Settings, name: str, version: str) -> None:
    """Atomically point ``models/<name>/CURRENT`` at ``version``."""
    if not model_dir(settings, name, version).is_dir():
        raise FileNotFoundError(f"no version {version} of {name}")
    write_pointer(settings.models_dir / name, version)


def write_scorer(settings: Settings, name: str, version: str, scorer: dict[str, Any]) -> UPath:
    """Write a version's ``scorer.json`` (written whole, then renamed into place)."""
    d = model_dir(settings, name, version)
    d.mkdir(parents=True, exist_ok=True)
    write_atomically(d / SCORER_FILE, json.dumps(scorer, indent=2, sort_keys=True).encode())
    return d / SCORER_FILE


def read_scorer(settings: Settings, name: str, version: str) -> dict[str, Any] | None:
    """A version's ``scorer.json``; None when it has none (trained before scorers existed)."""
    try:
        return json.loads((model_dir(settings, name, version) / SCORER_FILE).read_text())
    except FileNotFoundError:
        return None
