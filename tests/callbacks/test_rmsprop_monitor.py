"""RMSpropSGLD as a monitor's sampler in a real Trainer run."""

from __future__ import annotations

import math

import lightning as L

from lightning_devinterp import Component, LLCMonitor, RMSpropSGLD
from tests.helpers import RegressionModule, trainer


def test_llc_monitor_samples_with_the_preconditioned_sampler(tmp_path):
    sampler = RMSpropSGLD(lr=1e-5, nbeta=10.0, localization=100.0)
    monitor = LLCMonitor(
        sampler=sampler,
        at_steps=[2, 4],
        num_chains=2,
        num_draws=10,
        components=[Component.from_patterns(RegressionModule(), "net.0.*", name="first")],
    )
    L.seed_everything(0, verbose=False)
    trainer(tmp_path, callbacks=[monitor], max_steps=4).fit(RegressionModule())
    assert [r["step"] for r in monitor.history] == [2, 4]
    for record in monitor.history:
        assert math.isfinite(record["llc/mean"]) and record["llc/nbeta"] == 10.0
        assert math.isfinite(record["rllc/first/mean"])
    assert monitor.history[0]["llc/mean"] != monitor.history[1]["llc/mean"]
