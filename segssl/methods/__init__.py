"""Training methods: one shared base, one small class per method."""

from segssl.methods.base import SegmentationMethod
from segssl.methods.cps import CrossPseudoSupervision
from segssl.methods.mean_teacher import MeanTeacher
from segssl.methods.supervised import Supervised

__all__ = ["CrossPseudoSupervision", "MeanTeacher", "SegmentationMethod", "Supervised"]
