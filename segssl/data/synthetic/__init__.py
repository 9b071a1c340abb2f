"""Built-in synthetic cardiac short-axis cine-MRI phantom, written in the SSL4MIS ACDC h5 layout.

Why: ``python -m segssl train`` must run with no download, and the synthetic data must go through
exactly the same reader as the real ACDC data. The phantom is designed to be learnable but not
trivial: LV and RV blood look alike (and like some background vessels), the myocardium can be
nearly as bright as the surrounding tissue, and contrast, noise and bias vary per patient, so a
model needs shape and context, and unlabeled data (the domain spread) helps.

Layout written under ``root`` (see :func:`ensure_synthetic_dataset`)::

    synthetic.json                          generator version and parameters (the stamp)
    train_slices.list / train.list          training slice ids / volume ids, patient by patient
    val.list / test.list                    held-out volume ids (omitted when a split is empty)
    data/<case>.h5                          image (D,H,W) float32 in [0,1], label (D,H,W) uint8
    data/slices/<case>_slice_<k>.h5         training slices, slice_k = volume[k - 1]

Geometry is drawn in normalised coordinates ([-1, 1] across the field of view), so the image size
only sets the resolution. Labels: 0 background, 1 RV, 2 myocardium, 3 LV (papillary muscles
count as LV, the thin RV free wall as background, as in ACDC).
"""

from segssl.data.synthetic.anatomy import *  # noqa: F403
from segssl.data.synthetic.dataset import *  # noqa: F403
from segssl.data.synthetic.rendering import *  # noqa: F403
