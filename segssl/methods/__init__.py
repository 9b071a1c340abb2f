"""Training methods: one shared base, one small class per method."""

from segssl.methods.abd import AdaptiveBidirectionalDisplacement
from segssl.methods.abd_bcp import AdaptiveBidirectionalDisplacementBCP
from segssl.methods.admt import AlternateDiverseTeaching
from segssl.methods.base import SegmentationMethod
from segssl.methods.bcp import BidirectionalCopyPaste
from segssl.methods.cps import CrossPseudoSupervision
from segssl.methods.mean_teacher import MeanTeacher
from segssl.methods.supervised import Supervised
from segssl.methods.unimatch import UniMatch

__all__ = [
    "AdaptiveBidirectionalDisplacement",
    "AdaptiveBidirectionalDisplacementBCP",
    "AlternateDiverseTeaching",
    "BidirectionalCopyPaste",
    "CrossPseudoSupervision",
    "MeanTeacher",
    "SegmentationMethod",
    "Supervised",
    "UniMatch",
]
