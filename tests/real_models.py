"""The real families as fixtures: tiny random-weight models built from the families' own tokenizer files, chat
templates, generation configs and config.json (../shared/data/real_models, see its MANIFEST.md; another folder of
family folders with $LMFORGE_REAL_MODELS), through `lmforge.bench.families`, the builder `lmforge bench --suite
models` uses. A family that cannot be built here is skipped with the reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmforge.bench.families import FamilyUnavailable, discover
from lmforge.bench.model_matrix import FamilyRun

REAL_MODELS = Path(os.environ.get("LMFORGE_REAL_MODELS")
                   or Path(__file__).resolve().parents[2] / "shared" / "data" / "real_models")
FAMILIES = {f.name: f for f in discover(REAL_MODELS)} if REAL_MODELS.is_dir() else {}


@pytest.fixture(scope="session")
def family_run(tmp_path_factory):
    """`family_run(name)`: the family's FamilyRun (its tiny models built once per session)."""
    runs: dict[str, FamilyRun] = {}

    def get(name: str) -> FamilyRun:
        if name not in runs:
            runs[name] = FamilyRun(FAMILIES[name], tmp_path_factory.mktemp(f"real-{name}"))
        return runs[name]

    return get


@pytest.fixture(scope="session")
def real_model(family_run):
    """`real_model(name, head=None)`: the directory of a tiny model of that family (as published, or `head`)."""
    def get(name: str, head: str | None = None) -> str:
        if name not in FAMILIES:
            pytest.skip(f"{name} is not in {REAL_MODELS}")
        try:
            return family_run(name).model(head)
        except FamilyUnavailable as err:
            pytest.skip(f"{name}: {err}")

    return get
