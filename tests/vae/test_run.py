"""The VAE task's pieces: the fixed evaluation bits, the minibatch order, its resumable state."""

from __future__ import annotations

import torch
from rich.console import Console

from nfvi.config import typed
from nfvi.vae.run import Batches, VAETask, eval_inputs, load_data
from tests.flows.composed import composed_config

QUIET = Console(quiet=True)


def config(*overrides: str):
    return typed(composed_config("dataset.source=bundled", "model.hidden=[16]",
                                 "model.latent_dim=2", "K=1", *overrides))


def test_threshold_binarization_applies_to_validation_and_test():
    cfg = config("dataset.binarize=threshold", "dataset.threshold=0.3")
    data = load_data(cfg, QUIET)
    for split, raw in (("val", data.val), ("test", data.test)):
        x = eval_inputs(cfg, data, split, torch.device("cpu"))
        assert torch.equal(x, (raw > 0.3).float()), split
        assert not torch.equal(x, (raw > 0.5).float())  # the data has grey levels in between
    task = VAETask(cfg, torch.device("cpu"), QUIET)
    assert torch.equal(task.val_x, (data.val > 0.3).float())


def test_dynamic_evaluation_bits_are_fixed_per_seed_and_split():
    cfg = config()
    data = load_data(cfg, QUIET)
    a = eval_inputs(cfg, data, "test", torch.device("cpu"))
    assert torch.equal(a, eval_inputs(cfg, data, "test", torch.device("cpu")))
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(a[:500], eval_inputs(cfg, data, "val", torch.device("cpu"))[:500])
    assert eval_inputs(cfg, data, "test", torch.device("cpu"), limit=7).shape[0] == 7


def test_batches_cover_each_epoch_once_and_resume_exactly():
    b = Batches(23, 5, seed=3)
    assert b.per_epoch == 4
    epoch = torch.cat([b.take() for _ in range(4)])
    assert len(set(epoch.tolist())) == 20  # the ragged last 3 are dropped, nothing repeats
    state = b.state_dict()
    ahead = [b.take() for _ in range(6)]
    again = Batches(23, 5, seed=99)
    again.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(ahead, [again.take() for _ in range(6)],
                                                 strict=True))


def test_task_state_round_trips_the_data_order_and_bits():
    cfg = config()
    task = VAETask(cfg, torch.device("cpu"), QUIET)
    for _ in range(3):
        task.objective(1.0)
    state = task.state_dict()
    torch.manual_seed(0)  # the z noise comes from the global RNG, which the loop restores
    after = [task.objective(1.0).stats["neg_elbo"] for _ in range(2)]
    other = VAETask(cfg, torch.device("cpu"), QUIET)
    other.model.load_state_dict(task.model.state_dict())
    other.load_state_dict(state)
    torch.manual_seed(0)
    again = [other.objective(1.0).stats["neg_elbo"] for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(after, again, strict=True))
    fresh = VAETask(cfg, torch.device("cpu"), QUIET)  # without the state: other batches
    fresh.model.load_state_dict(task.model.state_dict())
    torch.manual_seed(0)
    assert not torch.equal(fresh.objective(1.0).stats["neg_elbo"], after[0])
    assert task.describe().startswith("planar K=1 on mnist (bundled)")


def test_the_cpu_batch_bits_are_torch_bernoullis_draws():
    # VAETask.batch draws dynamic bits as rand < x on the CPU (faster): it must stay exactly
    # torch.bernoulli's draws, generator state included, or seeded runs would change
    task = VAETask(config(), torch.device("cpu"), QUIET)
    reference = torch.Generator().manual_seed(task.cfg.seed + 2)
    order = Batches(len(task.train_x), task.cfg.trainer.batch_size, task.cfg.seed)
    for _ in range(5):
        expected = torch.bernoulli(task.train_x[order.take()], generator=reference)
        assert torch.equal(task.batch(), expected)
    assert torch.equal(task.bin_gen.get_state(), reference.get_state())
