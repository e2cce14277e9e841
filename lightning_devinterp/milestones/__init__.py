"""Milestones: online detection of developmental stages, and essential dynamics."""

from lightning_devinterp.milestones.detector import MilestoneDetector
from lightning_devinterp.milestones.essential_dynamics import (
    find_trajectory_milestones,
    pca_trajectory,
    smooth_trajectory,
    trajectory_curvature,
)
from lightning_devinterp.milestones.records import Milestone, Stage
from lightning_devinterp.milestones.series import (
    loss_series,
    milestones_filename,
    series_keys,
    train_loss_series,
    write_milestones_json,
)
from lightning_devinterp.milestones.stage_view import StageSummary, stage_view
from lightning_devinterp.milestones.tracker import MilestoneTracker, train_loss_detector

__all__ = [
    "Milestone",
    "MilestoneDetector",
    "MilestoneTracker",
    "Stage",
    "StageSummary",
    "find_trajectory_milestones",
    "loss_series",
    "milestones_filename",
    "pca_trajectory",
    "series_keys",
    "smooth_trajectory",
    "stage_view",
    "train_loss_detector",
    "train_loss_series",
    "trajectory_curvature",
    "write_milestones_json",
]
