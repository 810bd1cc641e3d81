"""Lightning tasks: one problem type per module."""

from polyhead.tasks.base import BaseTask
from polyhead.tasks.segmentation import SegmentationTask

__all__ = ["BaseTask", "SegmentationTask"]
