"""The typed configuration schema, registered in Hydra's ConfigStore.

The YAML files under ``configs/`` fill this schema; a value of the wrong type (``K=abc``) or an
unknown key fails when Hydra composes the config. Range checks that a type cannot express
(``K >= 0``, the device string) are done by :func:`validate`.

This module must stay light: it is imported for ``nfvi train --help``, so no torch here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

from nfvi.errors import ConfigError


class Task(StrEnum):
    vae = "vae"
    energy = "energy"


class Source(StrEnum):
    auto = "auto"
    full = "full"
    bundled = "bundled"


class Binarize(StrEnum):
    dynamic = "dynamic"
    threshold = "threshold"
    none = "none"  # grey levels as they are (8-bit or continuous likelihoods)


class LikelihoodName(StrEnum):
    bernoulli = "bernoulli"
    categorical = "categorical"
    logit_normal = "logit_normal"


class BetaSchedule(StrEnum):
    paper = "paper"  # beta_t = min(1, start + t / steps)  (R&M 2015, with start=0.01, steps=1e4)
    linear = "linear"  # beta_t = min(1, t / steps): KL warm-up from zero
    none = "none"  # beta_t = 1


class Anneal(StrEnum):
    joint = "joint"  # R&M 2015 eq. 20: ln q - beta ln p(x, z)
    kl = "kl"  # KL warm-up (Berg et al. 2018): -ln p(x|z) + beta (ln q - ln p(z))


class LRSchedule(StrEnum):
    constant = "constant"
    cosine = "cosine"


class OnNonFinite(StrEnum):
    stop = "stop"  # stop the run, keeping the last finite checkpoints
    skip = "skip"  # skip the update (up to 20 in a row)


class OptimName(StrEnum):
    adam = "adam"
    adamax = "adamax"
    rmsprop = "rmsprop"


class Split(StrEnum):
    val = "val"
    test = "test"


class Activation(StrEnum):
    maxout = "maxout"
    relu = "relu"
    tanh = "tanh"
    softplus = "softplus"
    elu = "elu"


@dataclass
class DatasetConfig:
    name: str = "mnist"
    source: Source = Source.auto
    data_dir: str = "${oc.env:NFVI_DATA_DIR,data}"
    download: bool = False
    binarize: Binarize = Binarize.dynamic
    threshold: float = 0.5
    # the decoder's output distribution (nfvi/vae/likelihoods.py): binary data bernoulli,
    # 8-bit data categorical (also reported in bits/dim)
    likelihood: LikelihoodName = LikelihoodName.bernoulli
    val_size: int = 10000
    split_seed: int = 0
    # filled in at run time with what was actually used ("full" or "bundled")
    resolved_source: str | None = None


@dataclass
class FlowConfig:
    name: str = "planar"
    amortized: bool = True
    # amortized: the parameter head reads LayerNorm(h(x)) instead of h(x)
    context_norm: bool = False
    # amortized: theta = c + head_gain * W h (the head learns head_gain times slower);
    # null: 1/sqrt(number of encoder features)
    head_gain: float | None = 1.0
    # the flow acts on the standardized q0 sample eps: z_K = mu(x) + sigma(x) * f(eps)
    standardized: bool = False
    # amortized: the head reads h(x).detach(): it learns, but sends no gradient into the encoder
    detach_context: bool = False
    # amortized: width of the head's own hidden layer, theta = c + g W ELU(V h + a); null: none
    # (theta linear in h, as in the paper)
    context_hidden: int | None = None
    # planar, radial and Householder stacks run as one fused pass with a hand-derived backward
    # (nfvi/flows/fused.py; the same map to rounding); false: layer by layer through autograd
    fused: bool = True
    # extra keyword arguments for the layer class (flow-specific hyperparameters)
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    # the encoder/decoder architecture (nfvi/vae/networks.py: ARCHITECTURES): mlp, gated_conv
    name: str = "mlp"
    latent_dim: int = 40
    # mlp only: hidden widths (the decoder mirrors them), activation, maxout window
    hidden: list[int] = field(default_factory=lambda: [400, 400])
    activation: Activation = Activation.maxout
    maxout_pool: int = 4
    min_log_var: float = -12.0  # floor on q0's log variance (numerical safety)


@dataclass
class OptimConfig:
    name: OptimName = OptimName.adam
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    alpha: float = 0.99  # RMSprop smoothing
    # one fused kernel per update (Adam); None: fused where torch has the kernel; a resumed
    # run keeps the setting its checkpoint was saved with
    fused: bool | None = None


@dataclass
class TrainerConfig:
    batch_size: int = 100
    max_steps: int = 2000
    max_epochs: int | None = None
    val_interval: int = 250
    log_interval: int = 50
    patience: int | None = 10
    beta_schedule: BetaSchedule = BetaSchedule.paper
    anneal: Anneal = Anneal.joint
    beta_start: float = 0.01
    beta_steps: int = 500
    # optim.lr times a factor of the update: constant, or cosine from 1 to lr_final over
    # max_steps (the run's own budget: the same command gives the same schedule)
    lr_schedule: LRSchedule = LRSchedule.constant
    lr_final: float = 0.0
    # the same three in epochs of the training set (van den Berg et al. 2018 count warm-up and
    # patience in epochs): when set, they replace beta_steps, patience and val_interval
    beta_epochs: float | None = None
    patience_epochs: float | None = None
    val_epochs: float | None = None
    grad_clip: float | None = None
    on_nonfinite: OnNonFinite = OnNonFinite.stop
    num_threads: int | None = None
    # glibc: keep freed memory for the next step's tensors instead of page-faulting fresh
    # pages in every step (nfvi.runtime.keep_freed_memory); the process keeps its peak size
    keep_freed_memory: bool = True
    progress: bool = True
    # how many MC samples for the energy task's batches
    mc_samples: int = 256
    # torch.compile the training loss (and the VAE's importance-sampling passes); the first
    # step's wall time, compilation included, is the summary's compile_seconds
    compile: bool = False
    # CUDA only: replay the forward and backward of each update from one captured CUDA graph
    # (static batch buffers; the optimizer step stays eager)
    cuda_graph: bool = False


@dataclass
class EvalConfig:
    iw_samples: int = 200
    chunk: int = 500
    # GiB for one pass of the IS estimate; when set, the samples per pass (chunk) are chosen
    # from it and the model's activation size per sample (nfvi.vae.evaluate.choose_chunk)
    memory_gb: float | None = None
    batch_size: int = 100
    split: Split = Split.test
    max_examples: int | None = None
    seed: int = 1234
    # energy task: samples for the KL / ESS estimates and the density figure
    kl_samples: int = 100000
    grid: int = 400


@dataclass
class TargetConfig:
    name: str = "u1"
    # energy task: broad Gaussian envelope on z1 for U2-U4 (std); see nfvi.energy
    envelope_std: float = 4.0


@dataclass
class LoggerConfig:
    name: str = "none"  # none | tensorboard


@dataclass
class Config:
    task: Task = Task.vae
    K: int = 10
    device: str = "auto"
    seed: int = 0
    # the runs' folder under output_root (output_root/<name>/<flow>_K<K>/...)
    name: str = "default"
    output_root: str = "${oc.env:NFVI_OUTPUT_ROOT,outputs}"
    resume: str | None = None
    checkpoint: str | None = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def typed(cfg: Any) -> Config:
    """The composed DictConfig as the typed :class:`Config` (enums, dataclasses, plain dicts)."""
    from omegaconf import OmegaConf

    if isinstance(cfg, Config):
        return cfg
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def from_saved(saved: dict) -> Any:
    """A saved run's config (a checkpoint's or config.yaml's plain dict) merged onto the
    schema, as a DictConfig; older runs' keys brought up to date (``experiment`` -> ``name``)."""
    from omegaconf import OmegaConf

    if "experiment" in saved and "name" not in saved:  # runs made before the key's rename
        saved = {("name" if k == "experiment" else k): v for k, v in saved.items()}
    return OmegaConf.merge(OmegaConf.structured(Config), saved)


def to_plain(cfg: Config) -> dict:
    """Plain containers with enums as strings: what checkpoints and config.yaml hold."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)


def to_yaml(cfg: Config) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(to_plain(cfg))


def register_configs() -> None:
    """Register the schema as ``base_config``, which ``configs/config.yaml`` extends."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    try:  # the SLURM launcher's schema, extended by configs/hydra/launcher/submitit_slurm.yaml
        from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    except ImportError:  # plugin not installed: hydra/launcher=submitit_slurm is unavailable
        return
    from omegaconf import OmegaConf

    # stored as a plain dict: Hydra may import the plugin's module twice under two names
    fields = OmegaConf.to_container(OmegaConf.structured(SlurmQueueConf))
    cs.store(group="hydra/launcher", name="submitit_slurm_schema", node=fields)


def compose_config(*overrides: str) -> Any:
    """The DictConfig ``nfvi train OVERRIDES...`` composes (Hydra's compose API, no run)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def config_dir() -> Path:
    """The absolute path of the YAML configs (inside the wheel, or the source tree)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ConfigError(
        f"nfvi's configs/ folder was not found next to {here}; reinstall nfvi (pip install -e .)"
    )


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
SAFE_NAME = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]*$")  # no leading dot: not "." or ".."


def _validate_trainer(t: Any, task: str) -> None:
    """``trainer.*``: positive sizes, schedules in range, epoch keys only where epochs exist."""
    for key in ("batch_size", "max_steps", "val_interval", "log_interval", "mc_samples"):
        if getattr(t, key) <= 0:
            raise ConfigError(f"trainer.{key}={getattr(t, key)} must be positive")
    if t.max_epochs is not None and t.max_epochs <= 0:
        raise ConfigError(f"trainer.max_epochs={t.max_epochs} must be positive or null")
    if t.beta_steps <= 0:
        raise ConfigError(f"trainer.beta_steps={t.beta_steps} must be positive")
    if not 0.0 <= t.lr_final <= 1.0:
        raise ConfigError(f"trainer.lr_final={t.lr_final} must be in [0, 1] (a fraction of "
                          "optim.lr)")
    if not 0.0 <= t.beta_start <= 1.0:
        raise ConfigError(f"trainer.beta_start={t.beta_start} must be in [0, 1]")
    for key in ("beta_epochs", "patience_epochs", "val_epochs"):
        v = getattr(t, key)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ConfigError(f"trainer.{key}={v} must be a positive number of epochs, or null")
        if v is not None and task != "vae":
            raise ConfigError(f"trainer.{key} counts epochs of a data set; the {task} task "
                              "has none: set it to null and use the step-based key")
    if t.grad_clip is not None and not (math.isfinite(t.grad_clip) and t.grad_clip > 0):
        raise ConfigError(f"trainer.grad_clip={t.grad_clip} must be a positive norm, or null "
                          "for no clipping")
    if t.patience is not None and t.patience < 1:
        raise ConfigError(f"trainer.patience={t.patience} must be at least 1 validation, or "
                          "null for no early stopping")
    if t.compile and t.cuda_graph:
        raise ConfigError("trainer.compile and trainer.cuda_graph are exclusive; set one of them "
                          "to false")


def _validate_eval(e: Any) -> None:
    """``eval.*``: positive sample counts and sizes, a positive memory budget."""
    for key in ("iw_samples", "chunk", "batch_size", "kl_samples", "grid"):
        if getattr(e, key) <= 0:
            raise ConfigError(f"eval.{key}={getattr(e, key)} must be positive")
    if e.memory_gb is not None and not (math.isfinite(e.memory_gb) and e.memory_gb > 0):
        raise ConfigError(f"eval.memory_gb={e.memory_gb} must be a positive number of GiB, or "
                          "null to use eval.chunk")
    if e.max_examples is not None and e.max_examples <= 0:
        raise ConfigError(f"eval.max_examples={e.max_examples} must be positive or null")


def _validate_model(m: Any) -> None:
    """``model.*``: the architecture's name (the registry's) and positive sizes."""
    from nfvi.vae.networks import ARCHITECTURES  # torch: imported when validating, as FLOWS

    if str(m.name) not in ARCHITECTURES:
        raise ConfigError(f"unknown model {m.name!r}; choose model= one of "
                          f"{', '.join(sorted(ARCHITECTURES))}")
    if m.latent_dim <= 0 or any(h <= 0 for h in m.hidden) or m.maxout_pool <= 0:
        raise ConfigError("model.latent_dim, model.hidden and model.maxout_pool must be positive")


def validate(cfg: Any) -> None:
    """Range checks beyond types; raises :class:`ConfigError` with one line."""
    from nfvi.flows import FLOWS  # imported here: the task function may use torch, --help not
    from nfvi.optim import check_fused

    def flow_names() -> list[str]:
        return sorted(FLOWS)

    if cfg.K < 0:
        raise ConfigError(f"K={cfg.K} is negative; the flow length K must be >= 0 (K=0: no flow)")
    if not _DEVICE.match(str(cfg.device)):
        raise ConfigError(
            f"unknown device {cfg.device!r}; use device=auto, cpu, cuda, cuda:N or mps"
        )
    if not SAFE_NAME.match(str(cfg.name)):
        raise ConfigError(
            f"run name {cfg.name!r} has characters unsafe in a path; "
            "use letters, digits, '_', '-', '.'"
        )
    if cfg.flow.name not in flow_names():
        raise ConfigError(
            f"unknown flow {cfg.flow.name!r}; choose flow= one of {', '.join(flow_names())}"
        )
    if "fused" in (cfg.flow.hparams or {}):
        raise ConfigError("flow.hparams.fused is not a layer hyperparameter; set flow.fused=true "
                          "or false")
    d = cfg.dataset
    if str(d.likelihood) == "bernoulli" and str(d.binarize) == "none":
        raise ConfigError("dataset.likelihood=bernoulli needs binary pixels; set "
                          "dataset.binarize=dynamic or threshold, or dataset.likelihood="
                          "categorical for 8-bit data")
    if str(d.likelihood) != "bernoulli" and str(d.binarize) != "none":
        raise ConfigError(f"dataset.likelihood={d.likelihood} models grey levels, not binary "
                          "pixels; set dataset.binarize=none")
    _validate_trainer(cfg.trainer, str(cfg.task))
    if not (math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0):
        raise ConfigError(f"optim.lr={cfg.optim.lr} must be a positive finite number")
    check_fused(cfg.optim)
    _validate_eval(cfg.eval)
    _validate_model(cfg.model)
