"""nfvi.config: typed(), to_plain(), to_yaml(), validate() and config_dir()."""

import json
from dataclasses import fields, is_dataclass

import pytest
import yaml
from hydra import compose, initialize_config_dir

from nfvi.config import (
    Activation,
    BetaSchedule,
    Config,
    FlowConfig,
    OptimName,
    Source,
    Split,
    Task,
    TrainerConfig,
    config_dir,
    register_configs,
    to_plain,
    to_yaml,
    typed,
    validate,
)
from nfvi.errors import ConfigError
from nfvi.flows import FLOWS  # validate imports it (and torch): pay that at collection


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("NFVI_OUTPUT_ROOT", raising=False)
    monkeypatch.delenv("NFVI_DATA_DIR", raising=False)


def _compose(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="module")
def composed():
    return _compose()


def _assert_plain(node, where="cfg"):
    """Only dict / list / str / int / float / bool / None, exactly (a StrEnum is not a str)."""
    if type(node) is dict:
        for k, v in node.items():
            assert type(k) is str, where
            _assert_plain(v, f"{where}.{k}")
    elif type(node) is list:
        for i, v in enumerate(node):
            _assert_plain(v, f"{where}[{i}]")
    else:
        assert type(node) in (str, int, float, bool, type(None)), (where, type(node))


# -- config_dir -----------------------------------------------------------------------------
def test_config_dir_finds_config_yaml():
    d = config_dir()
    assert d.is_absolute()
    assert d.name == "configs"
    assert (d / "config.yaml").is_file()
    assert (d / "flow" / "planar.yaml").is_file()


# -- typed ----------------------------------------------------------------------------------
def test_typed_gives_dataclasses_with_enums(composed):
    cfg = typed(composed)
    assert type(cfg) is Config
    assert is_dataclass(cfg.trainer) and type(cfg.trainer) is TrainerConfig
    assert type(cfg.flow) is FlowConfig
    assert cfg.task is Task.vae
    assert cfg.trainer.beta_schedule is BetaSchedule.paper
    assert cfg.optim.name is OptimName.adam
    assert cfg.dataset.source is Source.auto
    assert cfg.eval.split is Split.test
    assert cfg.model.activation is Activation.maxout
    assert cfg.K == 10
    assert cfg.flow.name == "planar"
    assert type(cfg.flow.hparams) is dict and cfg.flow.hparams == {"centered": True}  # planar
    assert type(cfg.model.hidden) is list


def test_typed_flow_hparams_is_plain_dict():
    cfg = typed(_compose("flow=spline", "task=energy"))
    assert cfg.task is Task.energy
    hp = cfg.flow.hparams
    assert type(hp) is dict
    assert hp["bins"] == 8
    assert type(hp["hidden"]) is list and hp["hidden"] == [256, 256]


def test_typed_passes_a_config_through():
    cfg = Config()
    assert typed(cfg) is cfg


# -- to_plain / to_yaml ---------------------------------------------------------------------
def test_to_plain_is_plain_and_json_serializable(composed):
    plain = to_plain(typed(composed))
    _assert_plain(plain)
    assert plain["task"] == "vae" and type(plain["task"]) is str
    assert plain["trainer"]["beta_schedule"] == "paper"
    assert type(plain["trainer"]["beta_schedule"]) is str
    assert plain["output_root"] == "outputs"  # interpolations resolved
    assert plain["dataset"]["data_dir"] == "data"
    assert set(plain) == {f.name for f in fields(Config)}
    assert json.loads(json.dumps(plain)) == plain


def test_to_plain_of_default_dataclass(monkeypatch):
    monkeypatch.setenv("NFVI_OUTPUT_ROOT", "/tmp/elsewhere")
    plain = to_plain(Config())
    _assert_plain(plain)
    assert plain["output_root"] == "/tmp/elsewhere"
    assert plain["optim"]["name"] == "adam"
    assert plain["model"]["hidden"] == [400, 400]
    assert plain["trainer"]["max_epochs"] is None


def test_to_yaml_round_trips():
    cfg = typed(_compose("flow=spline", "K=3"))
    text = to_yaml(cfg)
    assert "!!python" not in text
    loaded = yaml.safe_load(text)
    assert loaded == to_plain(cfg)
    assert loaded["K"] == 3
    assert loaded["flow"]["hparams"]["min_bin_width"] == pytest.approx(1e-3)


# -- validate -------------------------------------------------------------------------------
def test_validate_passes_defaults(composed):
    assert "planar" in FLOWS
    validate(Config())
    validate(typed(composed))
    validate(composed)  # a DictConfig works too


def test_validate_accepts_edge_values():
    cfg = Config()
    cfg.K = 0
    cfg.device = "cuda:1"
    cfg.name = "paper_fig3-v1.2"
    validate(cfg)


def _set(cfg: Config, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = cfg
    for p in parents:
        node = getattr(node, p)
    setattr(node, last, value)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("K", -1, "K=-1 is negative"),
        ("device", "tpu", "unknown device 'tpu'"),
        ("device", "cuda:", "unknown device"),
        ("name", "../x", "unsafe in a path"),
        ("name", "a b", "unsafe in a path"),
        ("flow.name", "nope", "unknown flow 'nope'; choose flow= one of .*planar"),
        ("trainer.max_steps", 0, r"trainer\.max_steps=0 must be positive"),
        ("trainer.batch_size", -5, r"trainer\.batch_size=-5 must be positive"),
        ("trainer.max_epochs", 0, r"trainer\.max_epochs=0 must be positive or null"),
        ("trainer.beta_steps", 0, r"trainer\.beta_steps=0 must be positive"),
        ("eval.iw_samples", 0, r"eval\.iw_samples=0 must be positive"),
        ("eval.max_examples", 0, r"eval\.max_examples=0 must be positive or null"),
        ("optim.lr", 0, r"optim\.lr=0 must be a positive"),
        ("optim.lr", -1e-3, r"optim\.lr=-0\.001 must be a positive"),
        ("optim.lr", float("inf"), r"optim\.lr=inf must be a positive finite"),
        ("optim.lr", float("nan"), r"optim\.lr=nan must be a positive finite"),
        ("model.latent_dim", 0, "model.latent_dim"),
        ("model.hidden", [400, 0], "model.hidden"),
    ],
)
def test_validate_refuses(key, value, match):
    cfg = Config()
    _set(cfg, key, value)
    with pytest.raises(ConfigError, match=match) as info:
        validate(cfg)
    assert "\n" not in str(info.value)


def test_validate_refuses_composed_override():
    with pytest.raises(ConfigError, match="K=-2 is negative"):
        validate(_compose("K=-2"))


@pytest.mark.parametrize("name", ["..", "."])
def test_validate_refuses_dot_name(name):
    cfg = Config()
    cfg.name = name
    with pytest.raises(ConfigError):
        validate(cfg)


def test_the_vae_trainer_ships_the_flow_length_study_defaults():
    """docs/flow_length.md: with R&M's joint annealing and a constant learning rate, amortized
    flows made the bound worse on Fashion-MNIST; the default trainer warms up the KL term only
    and decays the rate. trainer=paper keeps the paper's protocol; the energy task its own."""
    t = typed(_compose()).trainer
    assert (str(t.anneal), str(t.lr_schedule), t.lr_final) == ("kl", "cosine", 0.0)
    p = typed(_compose("trainer=paper")).trainer
    assert (str(p.anneal), str(p.lr_schedule)) == ("joint", "constant")
    e = typed(_compose("task=energy")).trainer
    assert (str(e.anneal), str(e.lr_schedule)) == ("joint", "constant")


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_lr_final_outside_the_unit_interval_is_refused(value):
    with pytest.raises(ConfigError, match="trainer.lr_final"):
        validate(typed(_compose(f"trainer.lr_final={value}")))


def test_likelihood_and_binarization_must_agree():
    with pytest.raises(ConfigError, match="dataset.likelihood=bernoulli needs binary pixels"):
        validate(typed(_compose("dataset.binarize=none")))
    with pytest.raises(ConfigError, match="dataset.binarize=none"):
        validate(typed(_compose("dataset=frey_faces", "dataset.binarize=dynamic")))
    validate(typed(_compose("dataset=frey_faces")))
