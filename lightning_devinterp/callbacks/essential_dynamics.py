"""EssentialDynamics: milestones from the model's function-space trajectory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_devinterp.callbacks.isolation import isolated
from lightning_devinterp.callbacks.schedule import Schedule
from lightning_devinterp.callbacks.trainer_info import last_step, output_folder, training_data
from lightning_devinterp.milestones import Milestone, find_trajectory_milestones, pca_trajectory
from lightning_devinterp.reporting import log_figure, report_milestones, write_milestones_json
from lightning_devinterp.reporting.figures import figure_image, plot_trajectory, save_png
from lightning_devinterp.sampling import move_to_device


def model_output(model: torch.nn.Module, probe: Any) -> torch.Tensor:
    """``model(probe)``, or ``model(probe[0])`` for an ``(inputs, targets)`` batch."""
    return model(probe[0] if isinstance(probe, (tuple, list)) else probe)


def first_batch(trainer: Trainer, pl_module: LightningModule) -> Any:
    """The first batch of the training data (:func:`training_data`), from a fresh iterator (a
    shuffling sampler draws from the global RNG, restored by ``isolated``)."""
    data = training_data(trainer, "EssentialDynamics(probe=None)")
    with isolated(pl_module):
        return next(iter(data))


class EssentialDynamics(Callback):
    """Record the model's outputs on a fixed probe batch over training, and find milestones
    where that trajectory (in its top principal components) turns sharply.

    Each scheduled step costs one forward pass in eval mode under ``no_grad`` (modes and RNG
    states are restored; no weight is touched).

    Args:
        probe: the fixed input, passed as ``output_fn(model, probe)``; None (for a YAML
            config): the first batch of the training dataloader, read through a fresh iterator
            at the start of training (training's own iterator is not advanced).
        output_fn: what to record; default ``model(probe)``, or ``model(probe[0])`` when the
            probe is a tuple or list (an ``(inputs, targets)`` batch).
        every_n_steps, num_estimates, at_steps: the schedule (as in :class:`LLCMonitor`).
        n_components: principal components of the trajectory searched for turns.
        sigma: Gaussian smoothing (in checkpoints) before the turn search.
        max_checkpoints: memory bound: past it, every other stored checkpoint is dropped.
        max_features: outputs longer than this are sketched down to this many features
            (each output adds, with a fixed random sign, into one fixed random feature: squared
            distances are preserved in expectation, at O(output) memory).
        min_checkpoints: checkpoints needed before milestones are searched for.
        name: prefix of the logged names and of the files written.
        output_dir: default ``<trainer.log_dir>/devinterp``.
    """

    def __init__(
        self,
        probe: Any = None,
        *,
        output_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
        every_n_steps: int | None = None,
        num_estimates: int | None = None,
        at_steps: Sequence[int] | None = None,
        n_components: int = 3,
        sigma: float = 3.0,
        max_checkpoints: int = 512,
        max_features: int = 4096,
        min_checkpoints: int = 12,
        name: str = "essential_dynamics",
        output_dir: str | None = None,
    ) -> None:
        super().__init__()
        for label, value, least in (
            ("n_components", n_components, 2),
            ("max_checkpoints", max_checkpoints, 8),
            ("max_features", max_features, 2),
            ("min_checkpoints", min_checkpoints, 4),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{label}={value!r} is invalid; use an integer >= {least}.")
        if not sigma > 0:
            raise ValueError(f"sigma={sigma!r} is invalid; use a positive smoothing width.")
        self.probe = probe
        self.output_fn = output_fn or model_output
        self.schedule = Schedule(every_n_steps, num_estimates, at_steps)
        self.n_components = n_components
        self.sigma = sigma
        self.max_checkpoints = max_checkpoints
        self.max_features = max_features
        self.min_checkpoints = min_checkpoints
        self.name = name
        self.output_dir = output_dir
        self.steps: list[int] = []
        self.rows: list[np.ndarray] = []
        self.milestones: list[Milestone] = []
        self._sketch: tuple[np.ndarray, np.ndarray] | None = None
        self._folder: Path | None = None
        self._last_seen_step: int | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._folder = output_folder(trainer, self.output_dir)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.schedule.resolve(last_step(trainer))
        if self.probe is None:
            self.probe = first_batch(trainer, pl_module)
        self._record(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self._record(trainer, pl_module)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero and len(self.rows) >= 3 and self._folder is not None:
            try:
                figure = plot_trajectory(*self.trajectory(), self.milestones)
            except ImportError as error:
                rank_zero_info(f"EssentialDynamics: no trajectory figure ({error}).")
                return
            image = figure_image(figure)
            save_png(image, self._folder / f"{self.name}.png")
            log_figure(trainer.loggers, f"{self.name}/trajectory", image, trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "rows": [r.tolist() for r in self.rows],
            "milestones": [m.to_dict() for m in self.milestones],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = list(state_dict.get("steps", []))
        self.rows = [np.asarray(r, dtype=np.float32) for r in state_dict.get("rows", [])]
        self.milestones = [Milestone.from_dict(m) for m in state_dict.get("milestones", [])]

    def trajectory(self) -> tuple[np.ndarray, np.ndarray]:
        """The checkpoints' steps and their scores in the top principal components."""
        scores, _ = pca_trajectory(np.stack(self.rows), self.n_components)
        return np.asarray(self.steps), scores

    def _record(self, trainer: Trainer, pl_module: LightningModule) -> None:
        step = trainer.global_step
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        after, self._last_seen_step = self._last_seen_step, step
        if self.schedule.first_due(after, step) is None or (self.steps and step <= self.steps[-1]):
            return
        with isolated(pl_module), torch.no_grad():
            pl_module.eval()
            probe = move_to_device(self.probe, pl_module.device)
            output = self.output_fn(pl_module, probe).detach().float().reshape(-1).cpu().numpy()
        self.steps.append(step)
        self.rows.append(self._project(output))
        if len(self.rows) > self.max_checkpoints:
            self.steps, self.rows = self.steps[::2], self.rows[::2]
        if len(self.rows) >= self.min_checkpoints:
            self._detect(trainer, step)

    def _project(self, output: np.ndarray) -> np.ndarray:
        if output.size <= self.max_features:
            return output.astype(np.float32)
        if self._sketch is None or len(self._sketch[0]) != output.size:
            rng = np.random.default_rng(0)
            features = rng.integers(self.max_features, size=output.size)
            self._sketch = features, rng.choice(np.array([-1.0, 1.0]), size=output.size)
        features, signs = self._sketch
        summed = np.bincount(features, weights=signs * output, minlength=self.max_features)
        return summed.astype(np.float32)

    def _detect(self, trainer: Trainer, step: int) -> None:
        found = find_trajectory_milestones(
            np.asarray(self.steps),
            np.stack(self.rows),
            self.n_components,
            self.sigma,
            series=self.name,
        )
        where = {s: i for i, s in enumerate(self.steps)}
        known = [where.get(m.step, -10) for m in self.milestones]
        new = [  # a turn re-found within 3 checkpoints of an announced one is the same turn
            Milestone(m.step, step, m.kind, m.value, m.series)
            for m in found
            if all(abs(where.get(m.step, -10) - k) > 3 for k in known)
        ]
        if not new:
            return
        self.milestones.extend(new)
        for m in new:
            rank_zero_info(f"EssentialDynamics: {m.kind} at step {m.step}, seen at step {step}.")
        if trainer.is_global_zero and self._folder is not None:
            write_milestones_json(
                self._folder / f"{self.name}_milestones.json", self.milestones, [], {}
            )
            report_milestones(trainer.loggers, self.milestones, step, self.name)
