"""The flow config exactly as ``nfvi train flow=<name>`` composes it (Hydra's compose API)."""

from __future__ import annotations

from nfvi.config import compose_config


def composed_config(*overrides: str):
    return compose_config(*overrides)


def flow_config(name: str):
    """The composed ``flow`` node of ``flow=<name>``."""
    return composed_config(f"flow={name}").flow
