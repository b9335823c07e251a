"""Callbacks: the latest training state however a fit ends (``last_checkpoint``), the random
generators' states and the data position for exact resumes (``resume_state``), stop on a non-finite loss (``nan_guard``), per-class AP table (``ap_table``),
validation images with their boxes (``validation_images``), PR curves and confusion matrix
(``validation_plots``), training speed-ups (``training_speed``), the EMA of the weights (``ema``). Scalar logging stays in the
LightningModule; media go through ``media``."""

from frcnn.app.callbacks.ap_table import PerClassAPTable
from frcnn.app.callbacks.ema import EMA
from frcnn.app.callbacks.last_checkpoint import LastCheckpoint
from frcnn.app.callbacks.nan_guard import NonFiniteLossError, NonFiniteLossGuard
from frcnn.app.callbacks.resume_state import ResumeState
from frcnn.app.callbacks.training_speed import TrainingSpeed
from frcnn.app.callbacks.validation_images import ValidationImages
from frcnn.app.callbacks.validation_plots import ValidationPlots

__all__ = ["EMA", "LastCheckpoint", "NonFiniteLossError", "NonFiniteLossGuard", "PerClassAPTable", "ResumeState",
           "TrainingSpeed", "ValidationImages", "ValidationPlots"]
