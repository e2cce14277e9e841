"""EssentialDynamics in real Trainer runs: isolation, trajectory, milestones, state."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch

from lightning_devinterp.callbacks import EssentialDynamics
from tests.helpers import RegressionModule, TwoLoaders, regression_data, trainer


def fit(tmp_path, callback=None, max_steps=30):
    L.seed_everything(0, verbose=False)
    module = RegressionModule()
    trainer(tmp_path, callbacks=[callback] if callback else [], max_steps=max_steps).fit(module)
    return module


def test_records_a_bounded_trajectory_without_touching_training(tmp_path):
    probe = regression_data(n=32, seed=5).tensors[0]
    plain = fit(tmp_path / "plain")
    dynamics = EssentialDynamics(probe, every_n_steps=1, max_checkpoints=16, min_checkpoints=8)
    watched = fit(tmp_path / "watched", dynamics)
    assert plain.losses == watched.losses
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # 30 checkpoints thinned to at most 16, still spanning the run, each 32 outputs long
    assert len(dynamics.steps) <= 16 and dynamics.steps[0] == 1 and dynamics.steps[-1] >= 25
    assert all(row.shape == (32,) for row in dynamics.rows)
    steps, scores = dynamics.trajectory()
    assert scores.shape == (len(steps), 3)
    assert (tmp_path / "watched" / "devinterp" / "essential_dynamics.png").exists() or list(
        (tmp_path / "watched").rglob("essential_dynamics.png")
    )


def test_a_planted_turn_in_function_space_is_found(tmp_path):
    """The output moves along one direction, then turns to another at step 20: a cusp."""

    class Turning(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.t = 0

        def forward(self, x):
            u, v = torch.zeros(64), torch.zeros(64)
            u[0], v[1] = 1.0, 1.0
            return (min(self.t, 20) * u + max(self.t - 20, 0) * v).expand(len(x), 64)

    turning = Turning()

    def output(module, x):
        turning.t = module.trainer.global_step
        return turning(x)

    dynamics = EssentialDynamics(torch.zeros(1, 4), output_fn=output, every_n_steps=1, sigma=1.5)
    fit(tmp_path, dynamics, max_steps=40)
    assert [m.kind for m in dynamics.milestones] == ["cusp"]
    assert abs(dynamics.milestones[0].step - 20) <= 3
    saved = json.loads(next(tmp_path.rglob("essential_dynamics_milestones.json")).read_text())
    assert [m["step"] for m in saved["online"]] == [dynamics.milestones[0].step]


def test_state_round_trip_and_bad_arguments():
    dynamics = EssentialDynamics(torch.zeros(1), at_steps=[1])
    dynamics.steps, dynamics.rows = [1, 2], [np.ones(3, np.float32), np.zeros(3, np.float32)]
    other = EssentialDynamics(torch.zeros(1), at_steps=[1])
    other.load_state_dict(dynamics.state_dict())
    assert other.steps == [1, 2] and np.array_equal(other.rows[0], dynamics.rows[0])
    with pytest.raises(ValueError, match="n_components=1"):
        EssentialDynamics(torch.zeros(1), n_components=1)
    with pytest.raises(ValueError, match="sigma"):
        EssentialDynamics(torch.zeros(1), sigma=0)


def test_long_outputs_are_sketched_with_distances_kept():
    """A 20000-long output sketched to 1000 features: the relative error of a squared distance
    has standard deviation about sqrt(2 / 1000) = 0.045, so 0.2 is over four of them."""
    dynamics = EssentialDynamics(torch.zeros(1), max_features=1000)
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(20000), rng.standard_normal(20000)
    sa, sb = dynamics._project(a), dynamics._project(b)
    assert sa.shape == (1000,) and np.array_equal(dynamics._project(a), sa)
    exact = np.sum((a - b) ** 2)
    assert abs(np.sum((sa - sb) ** 2) / exact - 1) < 0.2


def test_the_trajectory_figure_reaches_tensorboard(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dynamics = EssentialDynamics(regression_data(n=8).tensors[0], every_n_steps=2)
    logger = TensorBoardLogger(tmp_path, name="tb")
    L.seed_everything(0, verbose=False)
    trainer(tmp_path, callbacks=[dynamics], max_steps=12, logger=logger).fit(RegressionModule())
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("essential_dynamics/trajectory")] == [12]
    assert list(tmp_path.rglob("essential_dynamics.png"))


def test_without_a_probe_a_training_batch_is_used_and_training_is_untouched(tmp_path):
    reference = fit(tmp_path / "a")
    dynamics = EssentialDynamics(every_n_steps=5)
    watched = fit(tmp_path / "b", dynamics)
    inputs, _ = dynamics.probe  # a training batch, rows of the data set
    data = regression_data().tensors[0]
    assert len(inputs) == watched.batch_size and len(dynamics.steps) >= 6
    assert all((data == row).all(1).any() for row in inputs)
    for a, b in zip(reference.parameters(), watched.parameters(), strict=True):
        assert torch.equal(a, b)


def test_without_a_probe_two_train_dataloaders_give_their_combined_batch(tmp_path):
    dynamics = EssentialDynamics(
        every_n_steps=2, output_fn=lambda model, batch: model(batch["extra"][0])
    )
    trainer(tmp_path, callbacks=[dynamics], max_steps=6).fit(TwoLoaders())
    assert set(dynamics.probe) == {"main", "extra"}  # the batch training_step receives
    assert len(dynamics.probe["main"][0]) == 32 and len(dynamics.probe["extra"][0]) == 16
    assert len(dynamics.steps) >= 3
