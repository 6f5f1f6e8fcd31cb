"""Shell completion of Hydra overrides after ``nfvi train`` / ``nfvi eval``.

``nfvi --install-completion`` (Typer) installs completion of the commands; the ``train`` and
``eval`` commands then complete their Hydra overrides from the configs: ``flow=<TAB>`` lists the
flows (one YAML file per option in ``configs/<group>/``), ``K=``, ``trainer.<TAB>`` the keys of
the typed schema, enum keys their values, booleans ``true``/``false``. Bash splits words at
``=``, so there the key and the value arrive as separate words; zsh and fish pass ``key=value``
whole. Both are handled. No torch here: completion must answer fast.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from functools import cache

from nfvi.config import Config, config_dir

HYDRA_FLAGS = ["-m", "--multirun", "--cfg", "--help", "--hydra-help", "--info"]


@cache
def groups() -> dict[str, list[str]]:
    """Config group -> its options (the YAML files of ``configs/<group>/``)."""
    root = config_dir()
    return {d.name: sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(root.iterdir()) if d.is_dir() and d.name != "hydra"}


@cache
def keys() -> dict[str, list[str]]:
    """Every dotted key of the schema -> its possible values where they are finite."""
    out: dict[str, list[str]] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t, name = hints[f.name], prefix + f.name
            if dataclasses.is_dataclass(t):
                walk(t, name + ".")
            elif isinstance(t, type) and issubclass(t, enum.Enum):
                out[name] = [m.value for m in t]
            elif t is bool:
                out[name] = ["true", "false"]
            else:
                out[name] = []

    walk(Config, "")
    out["flow.name"] = groups().get("flow", [])
    return out


def values(key: str) -> list[str]:
    key = key.lstrip("+~")
    return groups().get(key) or keys().get(key, [])


def candidates(args: list[str], incomplete: str) -> list[str]:
    """Completions of ``incomplete``, the word being typed after ``args``."""
    if incomplete in ("", "=") and args and "=" not in args[-1] and values(args[-1]):
        return values(args[-1])  # bash: `flow=` with the cursor after '=' (a bare key word)
    if len(args) >= 2 and args[-1] == "=":  # bash: `flow=pl`
        return [v for v in values(args[-2]) if v.startswith(incomplete)]
    if "=" in incomplete:  # zsh, fish: the whole `key=value`
        key, _, prefix = incomplete.partition("=")
        return [f"{key}={v}" for v in values(key) if v.startswith(prefix)]
    words = [f"{g}=" for g in groups()] + [f"{k}=" for k in keys()]
    if incomplete.startswith("-"):
        words = HYDRA_FLAGS
    return sorted(w for w in set(words) if w.startswith(incomplete))
