"""Milestones: online detection of developmental stages, and essential dynamics."""

from lightning_devinterp.milestones.detector import MilestoneDetector
from lightning_devinterp.milestones.essential_dynamics import (
    find_trajectory_milestones,
    pca_trajectory,
    smooth_trajectory,
    trajectory_curvature,
)
from lightning_devinterp.milestones.records import Milestone, Stage

__all__ = [
    "Milestone",
    "MilestoneDetector",
    "Stage",
    "find_trajectory_milestones",
    "pca_trajectory",
    "smooth_trajectory",
    "trajectory_curvature",
]
