"""Shell completion: Typer's for the commands, nfvi's for the Hydra overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nfvi.completion import candidates, groups, keys
from nfvi.flows import FLOWS


def test_groups_and_options_come_from_the_configs():
    g = groups()
    assert set(FLOWS) <= set(g["flow"]) and "mnist" in g["dataset"]
    assert {"u1", "u2", "u3", "u4"} == set(g["target"])
    assert "hydra" not in g


def test_keys_cover_the_schema_with_their_values():
    k = keys()
    assert "trainer.max_steps" in k and k["trainer.beta_schedule"] == ["paper", "linear", "none"]
    assert k["flow.amortized"] == ["true", "false"] and k["K"] == []
    assert set(k["flow.name"]) == set(groups()["flow"])


@pytest.mark.parametrize("args, incomplete, expected", [
    ([], "flo", {"flow=", "flow.name=", "flow.amortized=", "flow.hparams=", "flow.head_gain=",
                 "flow.context_norm=", "flow.standardized=", "flow.detach_context=",
                 "flow.context_hidden=",
                 "flow.fused="}),
    ([], "flow=pl", {"flow=planar"}),                         # zsh / fish: the whole word
    (["flow", "="], "ra", {"radial"}),                        # bash: split at '='
    (["flow"], "", set(groups()["flow"])),                    # bash: cursor right after '='
    ([], "trainer.beta_s", {"trainer.beta_schedule=", "trainer.beta_start=",
                            "trainer.beta_steps="}),
    ([], "dataset.binarize=", {"dataset.binarize=dynamic", "dataset.binarize=threshold",
                                 "dataset.binarize=none"}),
    ([], "--c", {"--cfg"}),
    ([], "K=", set()),
])
def test_candidates(args, incomplete, expected):
    assert set(candidates(args, incomplete)) == expected


def complete(shell: str, words: str, cword: int | None = None) -> list[str]:
    env = {"_NFVI_COMPLETE": f"complete_{shell}", "PATH": "/usr/bin:/bin"}
    if shell == "bash":
        env |= {"COMP_WORDS": words, "COMP_CWORD": str(cword)}
    else:
        env["_TYPER_COMPLETE_ARGS"] = words
    script = Path(sys.executable).parent / "nfvi"  # the installed command: its name keys the env
    proc = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    return proc.stdout.split()


def test_bash_completes_commands_and_overrides_in_a_real_process():
    assert complete("bash", "nfvi tr", 1) == ["train"]
    assert "eval" in complete("bash", "nfvi ", 1)
    assert "planar" in complete("bash", "nfvi train flow = pl", 4)
    assert "sylvester_orthogonal" in complete("bash", "nfvi train flow =", 3)


def test_zsh_completes_key_value_words():
    out = " ".join(complete("zsh", "nfvi eval eval.spl"))
    assert "eval.split=" in out and "eval.split=" not in complete("zsh", "nfvi train K")


def test_install_completion_is_offered():
    proc = subprocess.run([sys.executable, "-m", "nfvi.cli", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert "--install-completion" in proc.stdout
