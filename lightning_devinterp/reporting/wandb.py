"""W&B extras: metrics declared by exact name against the trainer step, and one chart per
group of components (all heads of a layer)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: The step metric WandbLogger writes with every ``log_metrics`` call.
STEP_METRIC = "trainer/global_step"


def wandb_runs(loggers: Iterable[Any]) -> list[Any]:
    """The W&B runs behind the WandbLoggers among ``loggers``."""
    return [lg.experiment for lg in loggers if type(lg).__name__ == "WandbLogger"]


def declare_metrics(runs: Iterable[Any], names: Iterable[str], declared: set[str]) -> None:
    """``define_metric`` each new name (exactly, no glob) against the trainer step."""
    new = [name for name in names if name not in declared]
    for run in runs:
        run.define_metric(STEP_METRIC)
        for name in new:
            run.define_metric(name, step_metric=STEP_METRIC)
    declared.update(new)


def log_group_charts(
    runs: Iterable[Any],
    history: Sequence[Mapping[str, Any]],
    groups: Mapping[str, Sequence[str]],
    family: str,
    step: int,
) -> None:
    """Log one line chart per group: ``<family>/<component>/mean`` of each component of the
    group over the steps of ``history`` (redrawn at each estimate)."""
    runs = list(runs)
    if not runs or not groups:
        return
    import wandb

    steps = [r["step"] for r in history]
    charts = {}
    for group, names in groups.items():
        keys = [name for name in names if all(f"{family}/{name}/mean" in r for r in history)]
        if not keys:
            continue
        ys = [[r[f"{family}/{name}/mean"] for r in history] for name in keys]
        charts[f"{family}_chart/{group}"] = wandb.plot.line_series(
            xs=steps, ys=ys, keys=keys, title=f"{family} {group}", xname="step"
        )
    for run in runs:
        run.log({**charts, STEP_METRIC: step})
