"""SusceptibilityMonitor: how each component responds to shifts of the data, over training."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from lightning.pytorch import Trainer
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_devinterp.callbacks.scheduled import ScheduledAnalysis
from lightning_devinterp.callbacks.target import SamplingRun
from lightning_devinterp.components import Component
from lightning_devinterp.estimators import (
    Susceptibilities,
    sample_susceptibilities,
    susceptibilities_from_samples,
)
from lightning_devinterp.estimators.susceptibility import probe_batches
from lightning_devinterp.reporting.figures import figure_image, plot_response_matrix, save_png
from lightning_devinterp.reporting.susceptibility import report_susceptibilities, write_npz
from lightning_devinterp.sampling import SGLD

TokenLabel = Callable[[Any, tuple[int, ...]], str]


class SusceptibilityMonitor(ScheduledAnalysis):
    r"""Susceptibilities of components (by default every attention head) to probe data sets,
    with per-token attributions, on a schedule (see :func:`estimate_susceptibilities`).

    Each component's restricted SGLD chains give both its susceptibilities and its refined
    LLC, from one sampling run: with this monitor, ``LLCMonitor(components=...)`` is not
    needed for the same components. At each estimate it logs, for every probe ``p`` and
    component ``c``, ``<name>/<p>/<c>/mean`` (chi, nbeta included) and ``/stderr``; the
    singular values of the response matrix as ``<name>/sv/<k>``; refined LLCs as
    ``<name>/rllc/<c>/mean``. It also draws the response matrix as a heatmap (TensorBoard
    figure, W&B image and table, PNG), reports the ``top_k`` tokens of each probe and component
    with their signed chi (W&B table, TensorBoard text), appends a record to
    ``<log_dir>/devinterp/<name>.jsonl`` and exports everything, per-token values included, to
    ``<log_dir>/devinterp/<name>/step-<step>.npz``.

    Args:
        probes: name -> dataloader of a shifted distribution (for example sequences with
            repeated spans); the first ``num_probe_batches`` batches of each are fixed for the
            run and evaluated (forward only) at every draw.
        sampler: as for :class:`LLCMonitor` (``"auto"`` calibrates once).
        num_probe_batches: batches per probe.
        top_k: tokens reported per probe and component.
        token_label: ``token_label(batch, position)`` -> text for a probe token, where
            ``position`` indexes the batch's loss terms (for example ``(sample, t)``); default
            ``"batch b (sample, t)"``.
        components: ``"heads"`` (default) or a list of :class:`Component`; None for the whole
            model.
        name: prefix of the metrics and name of the output files.
        **kwargs: the settings of :class:`ScheduledAnalysis` (schedule, chains, draws, seed,
            dataloader, ``loss_fn`` returning unreduced per-sample or per-token losses,
            ``on_error``, ``output_dir``, ...).

    Example::

        probes = {"repeats": repeats_loader, "code": code_loader}
        trainer = L.Trainer(callbacks=[SusceptibilityMonitor(probes, num_estimates=8)])
    """

    def __init__(
        self,
        probes: Mapping[str, DataLoader | Iterable],
        sampler: SGLD | Literal["auto"] | None = None,
        *,
        num_probe_batches: int = 1,
        top_k: int = 10,
        token_label: TokenLabel | None = None,
        components: Literal["heads"] | Sequence[Component] | None = "heads",
        name: str = "susceptibility",
        **kwargs: Any,
    ) -> None:
        for unsupported in ("data", "milestones"):
            if unsupported in kwargs:
                raise TypeError(
                    f"SusceptibilityMonitor does not take {unsupported}=; use an LLCMonitor "
                    "beside it for data-refined LLCs and milestones."
                )
        super().__init__(sampler, components=components, name=name, **kwargs)
        _check_probe_args(probes, num_probe_batches, top_k)
        self.probes = dict(probes)
        self.num_probe_batches = num_probe_batches
        self.top_k = top_k
        self.token_label = token_label
        self.last_result: Susceptibilities | None = None

    @override
    def job_names(self) -> list[str]:
        return [component.name for component in self.target.resolved] or [self.name]

    @override
    def chart_families(self) -> list[str]:
        """Each probe's chi and the refined LLC, one chart per layer."""
        return [f"{self.name}/{probe}" for probe in self.probes] + [f"{self.name}/rllc"]

    @override
    def sample(self, trainer: Trainer, run: SamplingRun) -> Any:
        return sample_susceptibilities(
            run.model,
            self.target.data(trainer),
            self.probes,
            self.target.resolve(run.model) or None,
            run.loss_fn,
            num_probe_batches=self.num_probe_batches,
            **run.keywords(),
        )

    @override
    def reduce(self, parts: list[Any]) -> Susceptibilities:
        return susceptibilities_from_samples(parts)

    @override
    def record(self, trainer: Trainer, step: int, result: Susceptibilities, seconds: float) -> None:
        metrics: dict[str, float] = {}
        for i, probe in enumerate(result.probes):
            for j, component in enumerate(result.components):
                metrics[f"{self.name}/{probe}/{component}/mean"] = float(result.response[i, j])
                metrics[f"{self.name}/{probe}/{component}/stderr"] = float(result.stderr[i, j])
        for k, value in enumerate(result.singular_values.tolist()):
            metrics[f"{self.name}/sv/{k}"] = value
        for component, est in result.llc.items():
            metrics.update(est.metrics(f"{self.name}/rllc/{component}"))
        top = self._top_tokens(result)
        record: dict[str, Any] = {
            "step": step,
            "epoch": trainer.current_epoch,
            **metrics,
            **{f"{self.name}/{key}": value for key, value in result.to_record().items()},
            f"{self.name}/top_tokens": top,
            f"{self.name}/seconds": seconds,
        }
        self.last_result = result
        self.publish(trainer, record, metrics, {c: e.warnings for c, e in result.llc.items()})
        if not self.recorder.enabled:
            return
        if self.jsonl_path is not None:
            write_npz(self.jsonl_path.with_name(self.name) / f"step-{step}.npz", _arrays(result))
        heatmap = self._heatmap(result, step)
        report_susceptibilities(
            trainer.loggers,
            step,
            self.name,
            result.response.tolist(),
            result.probes,
            result.components,
            top,
            heatmap,
        )

    def _top_tokens(self, result: Susceptibilities) -> dict[str, dict[str, list[list[Any]]]]:
        """probe -> component -> [[label, chi], ...], strongest |chi| first."""
        if not self.top_k:
            return {}
        batches = probe_batches(self.probes, self.num_probe_batches, self.chains.seed, lambda b: b)
        top: dict[str, dict[str, list[list[Any]]]] = {}
        for probe in result.probes:
            top[probe] = {}
            for component in result.components:
                rows = []
                for index, value in result.top_tokens(probe, component, self.top_k):
                    number, *position = result.token_position(probe, index)
                    rows.append([self._label(batches[probe][number], number, position), value])
                top[probe][component] = rows
        return top

    def _label(self, batch: Any, number: int, position: list[int]) -> str:
        if self.token_label is not None:
            return str(self.token_label(batch, tuple(position)))
        return f"batch {number} {tuple(position)}"

    def _heatmap(self, result: Susceptibilities, step: int) -> Any | None:
        """The response-matrix figure drawn once (:func:`figure_image`, also saved as PNG), or
        None without matplotlib."""
        try:
            figure = plot_response_matrix(
                result.response.numpy(),
                result.probes,
                result.components,
                title=f"{self.name} at step {step}",
            )
        except ImportError:
            return None
        image = figure_image(figure)
        if self.jsonl_path is not None:
            save_png(image, self.jsonl_path.with_name(self.name) / f"response-step-{step}.png")
        return image


def _arrays(result: Susceptibilities) -> dict[str, Any]:
    """Everything of one checkpoint as arrays, per-token values included."""
    probe_modes, singular, component_modes = result.svd
    arrays: dict[str, Any] = {
        "probes": list(result.probes),
        "components": list(result.components),
        "response": result.response.numpy(),
        "stderr": result.stderr.numpy(),
        "per_chain": result.per_chain.numpy(),
        "singular_values": singular.numpy(),
        "probe_modes": probe_modes.numpy(),
        "component_modes": component_modes.numpy(),
        "nbeta": result.nbeta,
        "rllc": [est.mean for est in result.llc.values()],
    }
    for probe, values in result.per_token.items():
        arrays[f"per_token/{probe}"] = values.numpy()
    return arrays


def _check_probe_args(probes: Any, num_probe_batches: Any, top_k: Any) -> None:
    """Raise naming the first invalid argument and the fix."""
    if not isinstance(probes, Mapping) or not probes:
        raise ValueError(
            "probes must be a non-empty mapping of names to dataloaders, e.g. "
            "{'repeats': repeats_loader}."
        )
    for probe in probes:
        if not isinstance(probe, str) or not probe.isidentifier():
            raise ValueError(
                f"probe name {probe!r} is invalid; use names like 'repeats' or 'code'."
            )
    if isinstance(num_probe_batches, bool) or not (
        isinstance(num_probe_batches, int) and num_probe_batches >= 1
    ):
        raise ValueError(f"num_probe_batches={num_probe_batches!r} is invalid; use >= 1.")
    if isinstance(top_k, bool) or not (isinstance(top_k, int) and top_k >= 0):
        raise ValueError(f"top_k={top_k!r} is invalid; use an integer >= 0.")
