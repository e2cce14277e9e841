"""Essential dynamics: PCA of a trajectory, smoothing, and cusp milestones."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_devinterp.milestones import (
    Milestone,
    find_trajectory_milestones,
    pca_trajectory,
    smooth_trajectory,
)
from lightning_devinterp.milestones.essential_dynamics import trajectory_curvature

N, DIM = 150, 50
STEPS = np.arange(1, N + 1) * 100


def polyline(turns=(50, 100), angle=None, noise=0.2, seed=0, n=N, dim=DIM) -> np.ndarray:
    """Unit-speed path made of straight segments in ``dim`` dimensions, plus noise.

    With ``angle`` None successive directions are random (nearly orthogonal in high
    dimension); otherwise each segment turns by ``angle`` radians from the previous.
    """
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((len(turns) + 1, dim))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    if angle is not None:
        out = [dirs[0]]
        for d in dirs[1:]:
            v = d - (d @ out[-1]) * out[-1]
            v /= np.linalg.norm(v)
            out.append(np.cos(angle) * out[-1] + np.sin(angle) * v)
        dirs = np.array(out)
    seg = np.searchsorted(np.asarray(turns), np.arange(n), side="right")
    path = np.cumsum(dirs[seg], axis=0)
    return path + noise * rng.standard_normal((n, dim))


def test_pca_matches_covariance_eigenvalues():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 6)) @ np.diag([5.0, 3.0, 1.0, 0.5, 0.1, 0.01])
    scores, ratio = pca_trajectory(X, n_components=3)
    assert scores.shape == (40, 3) and ratio.shape == (3,)
    eig = np.sort(np.linalg.eigvalsh(np.cov(X.T, bias=True)))[::-1]
    np.testing.assert_allclose(ratio, eig[:3] / eig.sum(), rtol=1e-10)
    np.testing.assert_allclose(scores.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(scores.var(axis=0), eig[:3], rtol=1e-10)
    # rank-2 data: two components explain everything
    Y = rng.standard_normal((30, 2)) @ rng.standard_normal((2, 20))
    _, r2 = pca_trajectory(Y, n_components=3)
    assert r2[:2].sum() == pytest.approx(1.0) and r2[2] < 1e-20
    # deterministic sign convention
    s1, _ = pca_trajectory(X, 2)
    s2, _ = pca_trajectory(X.copy(), 2)
    np.testing.assert_array_equal(s1, s2)


def test_wide_trajectories_get_the_svd_answer_from_the_gram_matrix():
    """Fewer checkpoints than features (the usual case) takes the Gram route."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((12, 200)) * np.linspace(3.0, 0.1, 200)
    scores, ratio = pca_trajectory(X, 3)
    Xc = X - X.mean(axis=0)
    u, s, vt = np.linalg.svd(Xc, full_matrices=False)
    signs = np.sign(vt[np.arange(3), np.argmax(np.abs(vt[:3]), axis=1)])
    np.testing.assert_allclose(scores, u[:, :3] * s[:3] * signs, atol=1e-8)
    np.testing.assert_allclose(ratio, s[:3] ** 2 / (Xc**2).sum(), rtol=1e-8)


def test_pca_validates():
    with pytest.raises(ValueError, match="2-D array"):
        pca_trajectory(np.zeros(5))
    with pytest.raises(ValueError, match="n_components=4 must be between 1 and 3"):
        pca_trajectory(np.zeros((3, 10)), n_components=4)
    with pytest.raises(ValueError, match="NaN"):
        pca_trajectory(np.array([[0.0, np.nan], [1.0, 2.0]]))


def test_smoothing_keeps_constants_and_lines():
    t = np.arange(60, dtype=float)
    lines = np.stack([3.0 + 0 * t, 2.0 * t - 5], axis=1)
    for mode in ("reflect", "nearest"):
        out = smooth_trajectory(lines, sigma=2.0, mode=mode)
        assert out.shape == lines.shape
        np.testing.assert_allclose(out[:, 0], 3.0)
        np.testing.assert_allclose(out[10:-10, 1], lines[10:-10, 1], atol=1e-9)
    np.testing.assert_array_equal(smooth_trajectory(lines, 0.0), lines)
    # 1-D input and noise reduction
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(2000)
    sm = smooth_trajectory(noise, sigma=4.0)
    assert sm.shape == noise.shape
    assert sm.std() < 0.3 * noise.std()  # a Gaussian of sigma 4 keeps ~1/sqrt(8 pi) ~ 0.2
    with pytest.raises(ValueError, match="sigma=-1"):
        smooth_trajectory(lines, -1)
    with pytest.raises(ValueError, match="mode='wrap'"):
        smooth_trajectory(lines, 1.0, mode="wrap")


def test_curvature_of_a_circle():
    t = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    circle = 5.0 * np.stack([np.cos(t), np.sin(t), 0 * t], axis=1)
    kappa, ds = trajectory_curvature(circle)
    np.testing.assert_allclose(kappa[2:-2], 0.2, rtol=1e-3)
    assert (kappa * ds)[2:-2].sum() == pytest.approx(2 * np.pi * 396 / 400, rel=1e-3)


@pytest.mark.parametrize("noise", [0.1, 0.5, 1.0])
def test_finds_the_turns_of_a_polyline(noise):
    for seed in range(5):
        X = polyline(noise=noise, seed=seed)
        ms = find_trajectory_milestones(STEPS, X)
        assert [m.kind for m in ms] == ["cusp", "cusp"], (noise, seed, ms)
        found = [int(np.searchsorted(STEPS, m.step)) for m in ms]
        assert abs(found[0] - 50) <= 3 and abs(found[1] - 100) <= 3, (noise, seed, found)
        assert all(m.series == "essential_dynamics" and m.detected_at == STEPS[-1] for m in ms)
        assert all(1.0 < m.value < np.pi for m in ms)  # turning angle, about pi/2
        assert all(isinstance(m, Milestone) for m in ms)


def test_finds_a_sixty_degree_turn_and_works_on_log_steps():
    steps = np.unique(np.round(np.logspace(1, 5, N)).astype(int))
    X = polyline(turns=(70,), angle=np.pi / 3, noise=0.2, n=len(steps))
    ms = find_trajectory_milestones(steps, X)
    assert len(ms) == 1
    assert abs(int(np.searchsorted(steps, ms[0].step)) - 70) <= 3
    assert ms[0].value == pytest.approx(np.pi / 3, abs=0.25)


def test_no_cusp_on_a_noisy_line_or_an_arc():
    for seed in range(5):
        rng = np.random.default_rng(seed)
        d = rng.standard_normal(DIM)
        d /= np.linalg.norm(d)
        line = np.arange(N)[:, None] * d + 0.5 * rng.standard_normal((N, DIM))
        assert find_trajectory_milestones(STEPS, line) == []
        basis = np.linalg.qr(rng.standard_normal((DIM, 2)))[0]
        t = np.linspace(0, np.pi, N)
        arc = (50 * np.stack([np.cos(t), np.sin(t)], axis=1)) @ basis.T
        arc = arc + 0.2 * rng.standard_normal((N, DIM))
        assert find_trajectory_milestones(STEPS, arc) == []


def test_turns_in_the_edge_zone_are_ignored():
    X = polyline(turns=(4, 75), noise=0.1)
    ms = find_trajectory_milestones(STEPS, X, sigma=3.0, edge=2.0)
    assert len(ms) == 1  # the turn at checkpoint 4 is inside the 6-checkpoint edge zone
    assert abs(int(np.searchsorted(STEPS, ms[0].step)) - 74) <= 2


def test_random_walk_gives_few_cusps():
    """PCA turns a random walk into Lissajous-like curves (PAPERS.md): cusps found there
    are artefacts. Documented rate: about 3 per 150 checkpoints at the defaults."""
    counts = []
    ratios = []
    for seed in range(20):
        walk = np.cumsum(np.random.default_rng(seed).standard_normal((N, DIM)), axis=0)
        counts.append(len(find_trajectory_milestones(STEPS, walk)))
        ratios.append(pca_trajectory(walk, 3)[1])
    print(
        f"\nrandom walk ({N} checkpoints, {DIM} dims): cusps mean {np.mean(counts):.2f}, "
        f"max {max(counts)}; explained variance {np.round(np.mean(ratios, axis=0), 2)}"
    )
    assert np.mean(counts) <= 3.5
    assert max(counts) <= 6
    # a random walk's first component explains about 60% of the variance
    assert 0.45 < np.mean(ratios, axis=0)[0] < 0.75


def test_validates_inputs():
    X = polyline()
    with pytest.raises(ValueError, match="one step per row"):
        find_trajectory_milestones(STEPS[:-1], X)
    with pytest.raises(ValueError, match="strictly increasing"):
        find_trajectory_milestones(STEPS[::-1], X)
    with pytest.raises(ValueError, match="sigma=0"):
        find_trajectory_milestones(STEPS, X, sigma=0)
    with pytest.raises(ValueError, match="min_angle=-1"):
        find_trajectory_milestones(STEPS, X, min_angle=-1)
    with pytest.raises(ValueError, match="min_separation=2.5"):
        find_trajectory_milestones(STEPS, X, min_separation=2.5)
    # too short for anything outside the edge zones
    assert find_trajectory_milestones(STEPS[:10], X[:10]) == []
