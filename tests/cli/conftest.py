"""Fixtures of the end-to-end tests: a clean environment per test."""

from __future__ import annotations

import os

import pytest


@pytest.fixture()
def env(tmp_path):
    """Outputs under tmp; an empty data folder, so that auto falls back to the bundled set."""
    e = dict(os.environ)
    e["NFVI_OUTPUT_ROOT"] = str(tmp_path / "outputs")
    e["NFVI_DATA_DIR"] = str(tmp_path / "no-data")
    e.pop("NFVI_DEBUG", None)
    e.pop("HYDRA_FULL_ERROR", None)
    return e
