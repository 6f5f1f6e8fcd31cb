"""The flow config exactly as ``nfvi train flow=<name>`` composes it (Hydra's compose API)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from nfvi.config import config_dir, register_configs


def composed_config(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def flow_config(name: str):
    """The composed ``flow`` node of ``flow=<name>``."""
    return composed_config(f"flow={name}").flow
