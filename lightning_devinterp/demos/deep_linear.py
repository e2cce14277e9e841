"""A teacher-student deep linear network that learns its teacher's modes one at a time.

Inputs ``x ~ N(0, I)`` and targets ``y = T x + noise`` from a teacher ``T = U diag(s) V^T``
with well separated singular values ``s``. A deep linear student ``W_L ... W_1`` trained from
small initialization learns the teacher's modes one at a time, largest first (saddle-to-saddle
dynamics): the loss falls in steps, and between the drops the weights sit near the rank-``r``
critical point :func:`critical_point`.

Depth matters for the LLC. At depth 2 those points are strict saddles (curvature ``-s`` along
the next mode), so a localized chain slides into the next stage unless
``nbeta * s < localization`` for every mode, which leaves the later modes unresolved. At depth
3 or more the Hessian there has no negative eigenvalue (the loss falls only at third order in
the weights), and an estimate at each plateau measures the stage: with widths (16, 4, 4, 16),
``s = (3, 1, 0.33)``, ``nbeta = 30``, ``localization = 100`` the plateaus read -0.1, 9.2, 11.9,
13.0 against :func:`laplace_llc` 0, 8.9, 12.5, 13.5 and Aoyagi's :func:`learning_coefficient`
8, 20, 32, 44. Between plateaus, while the weights move fast, the estimate dips (to -48 at the
first transition): it is taken where the gradient is not zero.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import lightning as L
import torch
from torch import nn
from torch.utils.data import Dataset


class TeacherData(Dataset):
    """``size`` samples ``(x, y)`` with ``x ~ N(0, I)`` and ``y = T x + noise * N(0, I)``.

    Args:
        size: number of samples.
        input_dim: dimension of ``x``.
        output_dim: dimension of ``y``.
        singular_values: the teacher's nonzero singular values, largest first.
        noise: standard deviation of the label noise.
        seed: seed of the teacher's singular vectors and of the samples.

    Attributes:
        teacher: ``(output_dim, input_dim)`` matrix ``T``.
        left, right: its singular vectors ``U`` (output side) and ``V`` (input side), one
            column per mode.
        singular_values: ``s`` as a tensor.
    """

    def __init__(
        self,
        size: int = 4096,
        input_dim: int = 8,
        output_dim: int = 8,
        singular_values: Sequence[float] = (4.5, 1.5, 0.5),
        noise: float = 0.1,
        seed: int = 0,
    ) -> None:
        values = [float(v) for v in singular_values]
        if not values or min(values) <= 0 or values != sorted(values, reverse=True):
            raise ValueError(
                f"singular_values={tuple(singular_values)!r} must be positive and in decreasing "
                "order, e.g. (4.5, 1.5, 0.5)."
            )
        if len(values) > min(input_dim, output_dim):
            raise ValueError(
                f"{len(values)} singular values do not fit a {output_dim} x {input_dim} teacher; "
                f"give at most {min(input_dim, output_dim)}."
            )
        if size < 1 or noise < 0:
            raise ValueError(f"size={size!r} must be >= 1 and noise={noise!r} >= 0.")
        g = torch.Generator().manual_seed(seed)
        rank = len(values)
        self.left = torch.linalg.qr(torch.randn(output_dim, rank, generator=g))[0]
        self.right = torch.linalg.qr(torch.randn(input_dim, rank, generator=g))[0]
        self.singular_values = torch.tensor(values)
        self.teacher = self.left @ torch.diag(self.singular_values) @ self.right.T
        self.x = torch.randn(size, input_dim, generator=g)
        self.y = self.x @ self.teacher.T + noise * torch.randn(size, output_dim, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch by one indexing operation (the DataLoader uses it when present)."""
        index = torch.as_tensor(indices)
        return self.x[index], self.y[index]

    @staticmethod
    def collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Collate for a DataLoader over this data set (batches arrive already stacked)."""
        return batch

    def mode_strengths(self, weight: torch.Tensor) -> torch.Tensor:
        """How much of each teacher mode the map ``weight`` has learned: ``u_i^T W v_i / s_i``
        (0 before, about 1 after)."""
        return torch.einsum("oi,oj,ji->i", self.left, weight, self.right) / self.singular_values


def half_mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``1/2 |y - f(x)|^2`` summed over outputs, averaged over the batch."""
    x, y = batch
    return 0.5 * (model(x) - y).square().sum(-1).mean()


class DeepLinearNetwork(L.LightningModule):
    """A bias-free deep linear network ``x -> W_L ... W_1 x`` trained by SGD on
    :func:`half_mse`.

    Args:
        widths: layer widths from input to output, e.g. ``(8, 4, 4, 8)`` for depth 3.
        init_scale: standard deviation of every initial weight.
        lr: SGD learning rate.
        seed: seed of the initial weights.
        data: when given, the learned share of each teacher mode
            (:meth:`TeacherData.mode_strengths`) is recorded after every step in
            :attr:`modes`, with the training loss in :attr:`losses`.
    """

    def __init__(
        self,
        widths: Sequence[int] = (8, 4, 4, 8),
        init_scale: float = 0.03,
        lr: float = 0.02,
        seed: int = 0,
        data: TeacherData | None = None,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(
                f"widths={tuple(widths)!r} must list at least an input and an output width, "
                "all >= 1, e.g. (8, 4, 4, 8)."
            )
        if init_scale <= 0 or lr <= 0:
            raise ValueError(f"init_scale={init_scale!r} and lr={lr!r} must both be > 0.")
        self.save_hyperparameters(ignore=["data"])
        g = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList(
            nn.Linear(a, b, bias=False) for a, b in itertools.pairwise(widths)
        )
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.copy_(init_scale * torch.randn(layer.weight.shape, generator=g))
        self.data = data
        self.modes: list[list[float]] = []
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def end_to_end(self) -> torch.Tensor:
        """The product ``W_L ... W_1``, shape ``(output, input)``."""
        weight = self.layers[0].weight
        for layer in self.layers[1:]:
            weight = layer.weight @ weight
        return weight

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        loss = half_mse(self, batch)
        self.log("train_loss", loss)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.data is not None:
            with torch.no_grad():
                self.modes.append(self.data.mode_strengths(self.end_to_end()).tolist())
            self.losses.append(float(outputs["loss"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def transition_steps(modes: Sequence[Sequence[float]], level: float = 0.5) -> list[int | None]:
    """The first step at which each mode's learned share reaches ``level``.

    Args:
        modes: one row per step (as recorded in :attr:`DeepLinearNetwork.modes`, whose row
            ``k`` is the state after step ``k + 1``), one column per mode.
        level: share of the mode that counts as learned.

    Returns:
        One step per mode, ``None`` for a mode not learned by the end.
    """
    out: list[int | None] = []
    for column in zip(*modes, strict=True):
        out.append(next((k + 1 for k, v in enumerate(column) if v >= level), None))
    return out


def critical_point(data: TeacherData, widths: Sequence[int], rank: int) -> list[torch.Tensor]:
    """The weights of the stage where the first ``rank`` teacher modes are learned.

    The balanced factorization of the teacher's best rank-``rank`` approximation: mode ``i``
    runs through hidden unit ``i`` of every layer with gain ``s_i ** (1 / depth)``; every
    other weight is 0. A critical point of the population loss ``1/2 |W - T|^2``.

    Args:
        data: the teacher.
        widths: layer widths from input to output; hidden widths at least ``rank``.
        rank: number of learned modes.

    Returns:
        One weight matrix per layer, shaped like ``nn.Linear.weight``.
    """
    widths = [int(w) for w in widths]
    if not 0 <= rank <= min([len(data.singular_values), *widths[1:-1]]):
        raise ValueError(
            f"rank={rank!r} must be between 0 and the number of teacher modes "
            f"({len(data.singular_values)}) and at most every hidden width ({widths[1:-1]})."
        )
    if (widths[0], widths[-1]) != (data.teacher.shape[1], data.teacher.shape[0]):
        raise ValueError(
            f"widths={tuple(widths)!r} do not fit the {data.teacher.shape[0]} x "
            f"{data.teacher.shape[1]} teacher; start with {data.teacher.shape[1]} and end "
            f"with {data.teacher.shape[0]}."
        )
    depth = len(widths) - 1
    gains = data.singular_values[:rank] ** (1.0 / depth)
    weights = []
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        weight = torch.zeros(fan_out, fan_in)
        for i in range(rank):
            row = data.left[:, i] if layer == depth - 1 else torch.eye(fan_out)[i]
            col = data.right[:, i] if layer == 0 else torch.eye(fan_in)[i]
            weight += gains[i] * torch.outer(row, col)
        weights.append(weight)
    return weights


def laplace_llc(
    data: TeacherData, widths: Sequence[int], rank: int, nbeta: float, localization: float
) -> float:
    """What a localized SGLD estimate sees at :func:`critical_point` if the loss were its
    quadratic approximation: ``1/2 sum_i nbeta h_i / (nbeta h_i + localization)`` over the
    eigenvalues ``h_i`` of the Hessian of ``1/2 |W - T|^2`` (inputs with identity
    covariance).

    At depth 3 or more the Hessian there has no negative eigenvalue and its rank is
    ``rank * (input + output - rank)``, twice the regular part of
    :func:`learning_coefficient`. The directions it misses (degenerate to second order) add
    to an estimate only when ``nbeta / localization**2`` is not small, so where the
    localization holds them this is the value a correct estimate should give, well below the
    learning coefficient, which counts them fully.
    """
    weights = critical_point(data, widths, rank)
    shapes = [w.shape for w in weights]
    sizes = [w.numel() for w in weights]
    teacher = data.teacher.double()

    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, sizes)
        product = parts[0].view(shapes[0])
        for part, shape in zip(parts[1:], shapes[1:], strict=True):
            product = part.view(shape) @ product
        return 0.5 * (product - teacher).square().sum()

    flat = torch.cat([w.reshape(-1) for w in weights]).double()
    curvature = torch.linalg.eigvalsh(torch.func.hessian(loss)(flat)).clamp(min=0.0)
    return 0.5 * float((nbeta * curvature / (nbeta * curvature + localization)).sum())


def learning_coefficient(widths: Sequence[int], rank: int) -> float:
    """The learning coefficient of a deep linear network at a true map of rank ``rank``.

    Aoyagi (2024), multiple-layered networks with linear units; for two layers it is the
    reduced-rank regression formula of Aoyagi & Watanabe (2005). With ``M_j = H_j - r`` for
    the widths ``H_0 ... H_L``, take the set ``S`` of ``l + 1`` widths with the smallest
    ``M_j`` such that ``max_S M < min_rest M``, ``sum_S M >= l max_S M`` and
    ``sum_S M < l min_rest M``; with ``a = sum_S M mod l``:

        lambda = (r (H_0 + H_L) - r^2) / 2 + a (l - a) / (4 l) - l (l - 1) / 4 (sum_S M / l)^2
                 + 1/2 sum_{j < k in S} M_j M_k

    Args:
        widths: layer widths from input to output.
        rank: rank of the true map (at most the smallest width).
    """
    widths = [int(w) for w in widths]
    if not 0 <= rank <= min(widths):
        raise ValueError(f"rank={rank!r} must be between 0 and the smallest width {min(widths)}.")
    m = [w - rank for w in widths]
    for size in range(2, len(m) + 1):
        for subset in itertools.combinations(range(len(m)), size):
            inside = [m[k] for k in subset]
            rest = [m[k] for k in range(len(m)) if k not in subset]
            lowest_rest = min(rest) if rest else math.inf
            ell, total = size - 1, sum(inside)
            if max(inside) < lowest_rest and ell * max(inside) <= total < ell * lowest_rest:
                a = total % ell
                pairs = sum(p * q for p, q in itertools.combinations(inside, 2))
                return (
                    (rank * (widths[0] + widths[-1]) - rank * rank) / 2
                    + a * (ell - a) / (4 * ell)
                    - ell * (ell - 1) / 4 * (total / ell) ** 2
                    + pairs / 2
                )
    raise AssertionError(f"no subset satisfies Aoyagi's conditions for {widths}, rank {rank}")
