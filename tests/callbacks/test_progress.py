"""What Lightning's progress bars (TQDM and Rich) show while LLCMonitor samples, in real Trainer
runs on CPU: a second line naming the job and counting SGLD steps, removed afterwards, and the
latest LLC among the training bar's metrics."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback, RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import CSVLogger

from lightning_devinterp import SGLD, Component, LLCMonitor
from lightning_devinterp.callbacks.progress import SamplingProgress
from tests.helpers import RegressionModule, mse_loss, trainer

#: 2 chains x 40 draws: 80 SGLD steps per job, reported at 32, 40, 72 and 80.
SETTINGS = dict(sampler=SGLD(lr=1e-4, nbeta=10.0, localization=100.0), num_chains=2, num_draws=40)
JOB_STEPS = 80


def components():
    probe = RegressionModule()
    return [
        Component.from_patterns(probe, "net.0.*", name="first"),
        Component.from_patterns(probe, "net.4.*", name="last"),
    ]


class SeenByLoss:
    """A loss function that also records, at each call during sampling, what ``look()``
    returns (what the progress bar shows at that moment)."""

    def __init__(self, look):
        self.look = look
        self.seen: list = []

    def __call__(self, model, batch):
        shown = self.look()
        if shown is not None:
            self.seen.append(shown)
        return mse_loss(model, batch)


class AfterEachStep(Callback):
    """Calls ``check()`` at the end of every training step, after the progress bar's hook."""

    def __init__(self, check):
        self.check = check
        self.results: list = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.results.append(self.check(trainer, pl_module))


def fit(tmp_path, bar, loss_fn, after=None, **kwargs):
    monitor = LLCMonitor(
        at_steps=[2, 4], components=components(), loss_fn=loss_fn, **SETTINGS, **kwargs
    )
    callbacks = [monitor, bar] + ([after] if after else [])
    L.seed_everything(0, verbose=False)
    t = trainer(tmp_path, callbacks=callbacks, enable_progress_bar=True, max_steps=5)
    t.fit(RegressionModule())
    return t, monitor


def test_tqdm_shows_the_job_and_its_steps_on_a_second_line_then_removes_it(tmp_path):
    bar = TQDMProgressBar()

    def sampling_bar():
        bars = [b for b in list(Tqdm._instances) if b is not bar._train_progress_bar]
        if not bars:
            return None
        (nested,) = bars
        description = nested.desc.removesuffix(": ")  # set_description appends ": "
        postfix = bar.train_progress_bar.postfix
        return bar.trainer.global_step, description, nested.n, nested.total, nested.pos, postfix

    loss = SeenByLoss(sampling_bar)
    open_bars = AfterEachStep(lambda *_: len(list(Tqdm._instances)))
    t, monitor = fit(tmp_path, bar, loss, after=open_bars)

    # what is sampled, as the engine reports its steps: llc, then each component
    for step in (2, 4):
        seen = [row[1:] for row in loss.seen if row[0] == step]
        descriptions = list(dict.fromkeys(desc for desc, *_ in seen))
        assert descriptions == ["llc: llc 1/3", "llc: rllc/first 2/3", "llc: rllc/last 3/3"]
        counts = [n for _, n, total, _, _ in seen if total is not None]
        assert {total for _, _, total, _, _ in seen if total is not None} == {3 * JOB_STEPS}
        assert counts == sorted(counts) and counts[-1] >= 2 * JOB_STEPS + 32
    # the line under the training bar (tqdm stores a fixed position as -position)
    assert {abs(row[-2]) for row in loss.seen} == {1}
    # during the second estimate the training bar already shows the first LLC
    first = monitor.history[0]["llc/mean"]
    assert f"llc={Tqdm.format_num(first)}" in loss.seen[-1][-1]
    # removed after each estimate: only the training bar is open at the step's end
    assert open_bars.results == [1] * 5
    assert bar.train_progress_bar.desc.startswith("Epoch 0")
    assert f"llc={Tqdm.format_num(monitor.history[-1]['llc/mean'])}" in (
        bar.train_progress_bar.postfix
    )


def test_rich_shows_the_job_and_its_steps_as_a_second_task_then_removes_it(tmp_path):
    pytest.importorskip("rich")
    bar = RichProgressBar()

    def sampling_task():
        if bar.progress is None or bar.train_progress_bar_id is None:
            return None
        tasks = [t for t in bar.progress.tasks if t.id != bar.train_progress_bar_id]
        tasks = [t for t in tasks if t.id != bar.val_sanity_progress_bar_id]
        if not tasks:
            return None
        (task,) = tasks
        shown = bar.get_metrics(bar.trainer, bar.trainer.lightning_module)
        return (
            bar.trainer.global_step,
            task.description,
            task.completed,
            task.total,
            shown.get("llc"),
        )

    loss = SeenByLoss(sampling_task)
    task_count = AfterEachStep(lambda *_: len(bar.progress.tasks))
    t, monitor = fit(tmp_path, bar, loss, after=task_count)

    # no wider than the training task's description, so the shared columns stay put
    width = max(len(bar.train_progress_bar.description), len(bar.validation_description))
    for step in (2, 4):
        seen = [row[1:] for row in loss.seen if row[0] == step]
        descriptions = list(dict.fromkeys(desc for desc, *_ in seen))
        assert descriptions == ["llc 1/3", "rllc/first", "rllc/last"]
        assert all(len(d) <= width for d in descriptions)
        finite = [(done, total) for _, done, total, _ in seen if total != float("inf")]
        assert {total for _, total in finite} == {3 * JOB_STEPS}
        assert [d for d, _ in finite] == sorted(d for d, _ in finite)
        assert finite[-1][0] >= 2 * JOB_STEPS + 32
    # the bar's metrics: nothing before the first estimate, then the previous LLC
    first = monitor.history[0]["llc/mean"]
    assert [llc for step, *_, llc in loss.seen if step == 2] == [None] * len(
        [row for row in loss.seen if row[0] == 2]
    )
    assert {llc for step, *_, llc in loss.seen if step == 4} == {first}
    assert task_count.results == [1] * 5  # the sampling task is gone after each estimate
    assert bar.get_metrics(t, t.lightning_module)["llc"] == monitor.history[-1]["llc/mean"]


def test_the_bar_metric_reaches_no_logger_and_training_is_unchanged(tmp_path):
    def run(root, watched):
        monitor = LLCMonitor(every_n_steps=2, **SETTINGS)
        L.seed_everything(0, verbose=False)
        module = RegressionModule()
        t = trainer(
            root,
            callbacks=[monitor, TQDMProgressBar()] if watched else [TQDMProgressBar()],
            enable_progress_bar=True,
            max_steps=4,
            logger=CSVLogger(root),
        )
        t.fit(module)
        return t, module, monitor

    _, plain, _ = run(tmp_path / "plain", False)
    t, watched, monitor = run(tmp_path / "watched", True)
    assert plain.losses == watched.losses
    assert t.progress_bar_metrics["llc"] == monitor.history[-1]["llc/mean"]
    assert "llc" not in t.logged_metrics
    header = next((tmp_path / "watched").rglob("metrics.csv")).read_text().splitlines()[0]
    assert "llc" not in header.split(",")


def test_a_job_starts_when_the_engine_restarts_its_count():
    quiet = L.Trainer(enable_progress_bar=False, logger=False)
    progress = SamplingProgress(quiet, "llc", ["a", "b", "c"])
    for done in (32, 64, 80, 32, 80, 80):  # the last job's one chain fits one report
        progress(done, 80)
    assert progress.job == 2
    assert progress.describe() == "llc: c 3/3" and progress.describe(width=5) == "c 3/3"
    assert progress.describe(width=4) == "c"
    single = SamplingProgress(quiet, "llc", ["rllc_code/l11h7"])
    assert single.describe() == "llc: rllc_code/l11h7"
    assert single.describe(width=8) == "\u2026e/l11h7"
    assert SamplingProgress(quiet, "susceptibility").describe(10) == "sampling"
