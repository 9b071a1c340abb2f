"""A device-resident 2-D training set (``data.on_device``): batches built where the network runs.

The loader path (``segssl/data/transforms.py``) reads, augments and makes the two views of every
slice on a host core, then copies the batch to the device; on a GPU that host work is slower than
the network step. Here the training slices (image, the cached DSAIF views, ``filter.cache=true``,
each under its own key, and the labels) are copied to the device once, and each batch is drawn
and augmented there in a few batched tensor operations, with the distributions of the per-sample
transforms:

- branch per slice as ``RandSliceAugmentd``: rot90 (k uniform in 0..3) with a flip of each axis
  (each 1/2) with weight 0.5, a rotation uniform in [-20, 20] degrees (zeros outside the image)
  with weight 0.25, else nothing; all with the resize to ``data.image_size`` in the same single
  resampling (bilinear for images and views, nearest for labels, border-clamped without rotation),
  at the same sampling positions as the per-sample path;
- then the views as ``TwoViews`` with cached views: with probability ``p`` the two perturbations
  (the cached view of the perturbation's key, or the raw image for ``identity``), assigned 50/50
  to the networks, each view then a random gamma on its own range with probability ``gamma_p``.

Storage. ACDC's slices have 23 native sizes (154 to 512 pixels a side). They are kept at their
native size, concatenated in one flat buffer per stream with each slice's offset, height and width
(ragged storage); the image and the views of ``view_keys`` are packed as channels of that buffer,
each key's channels looked up by name (``SliceStore.layout``). Per batch, the chosen slices are
gathered into a zero-padded window of the batch's largest height and width and resampled by one
``grid_sample`` at the per-sample path's positions (labels: gathered at the rounded positions): the
geometry is the per-sample path's (tested slice by slice: images to 1e-5, labels identical), and the
memory is what the pixels need. ACDC's 1312 training slices (72.1 Mpixels) with both views in
float16 take 0.43 GB, plus 1 byte a pixel for the labeled slices' labels; padding every slice to the
largest (512 x 428) would take 1.7 GB, and pre-resizing to a storage size would add a second
interpolation (a blur and label changes at every boundary). The one difference from the loader path
is the float16 storage of images and views: a relative rounding of at most 2^-11 of each stored
intensity before interpolation; measured on ACDC's 1312 training slices (intensities in [0, 1]):
2.4e-4 at most, 2.5e-5 on average, far below the noise of MR data. Labels are exact (uint8).

Randomness: each pass (epoch) draws one seed from torch's global generator (so ``seed`` and a
resume's seed decide it, as for the loaders), offset by the DDP rank; slice order is drawn on the
host (shuffled without replacement per stream, cycled, as the loaders' ``shuffle=True``,
``drop_last`` and ``max_size_cycle``), augmentation parameters on the device. Nothing is read
back from the device while batches are built.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from segssl.data.augment import BRANCH_WEIGHTS, ROTATE_DEGREES, identity_grid
from segssl.data.readers import DataError

log = logging.getLogger(__name__)

ROT_FLIP, ROTATE, IDENTITY = 0, 1, 2  # branch codes, in the order of augment.BRANCHES
IMAGE = "image"  # the sample key of the raw image; views come under their own keys


# -- storage --------------------------------------------------------------------------------
def slice_shape(item: dict, keys: Sequence[str]) -> tuple[tuple[int, ...], int, int]:
    """The channels of each of ``keys`` in ``item`` (each (C, H, W)) and their common H, W."""
    shapes = [np.shape(item[key]) for key in keys]
    if any(len(s) != 3 for s in shapes) or len({s[1:] for s in shapes}) != 1:
        raise DataError(
            f"data.on_device holds 2-D slices (C, H, W) of one size per slice; slice "
            f"{item.get('case')} has {dict(zip(keys, shapes, strict=True))}"
        )
    return tuple(s[0] for s in shapes), shapes[0][1], shapes[0][2]


def store_nbytes(items: Sequence[dict], with_labels: bool, view_keys: Sequence[str] = ()) -> int:
    """Device bytes a ``SliceStore`` of ``items`` needs (float16 images and views, uint8
    labels)."""
    total = 0
    for item in items:
        channels, height, width = slice_shape(item, (IMAGE, *view_keys))
        total += height * width * (2 * sum(channels) + (1 if with_labels else 0))
    return total


class SliceStore:
    """2-D training items at their native sizes in one flat device buffer (ragged): the image and
    the views of ``view_keys`` packed as (total pixels, C) float16, pixel-major so that one
    gathered row holds every channel of a pixel, ``layout`` saying which channels hold which
    key; labels (total pixels,) uint8; per slice its offset, height and width. Items hold
    ``image`` (C, H, W), each view (1, H, W) under its key and, if labeled, ``label`` (H, W)."""

    def __init__(
        self,
        items: Sequence[dict],
        device: torch.device,
        with_labels: bool,
        view_keys: Sequence[str] = (),
    ) -> None:
        if not items:
            raise DataError("a device-resident training stream needs at least one slice")
        keys = (IMAGE, *view_keys)
        shapes = [slice_shape(item, keys) for item in items]
        if len({s[0] for s in shapes}) != 1:
            raise DataError(
                f"data.on_device holds slices with one channel count per key ({list(keys)}); "
                f"got {sorted({s[0] for s in shapes})[:4]}"
            )
        counts = shapes[0][0]
        starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
        # key -> its channels in the packed buffer (the batch's augmented channels alike)
        bounds = zip(keys, starts[:-1], starts[1:], strict=True)
        self.layout = {key: slice(start, stop) for key, start, stop in bounds}
        channels = int(sum(counts))
        sizes = np.array([s[1] * s[2] for s in shapes], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        images = np.empty((int(sizes.sum()), channels), dtype=np.float16)
        labels = np.empty(int(sizes.sum()), dtype=np.uint8) if with_labels else None
        for item, start, size in zip(items, offsets, sizes, strict=True):
            for key, where in self.layout.items():
                images[start : start + size, where] = (
                    np.asarray(item[key]).reshape(where.stop - where.start, -1).T
                )
            if labels is not None:
                label = np.asarray(item["label"])
                if label.min() < 0 or label.max() > 255:
                    raise DataError(
                        f"slice {item.get('case')}: label values {label.min()}..{label.max()} do "
                        "not fit the device store's uint8 labels (data.on_device=false reads them "
                        "as they are)"
                    )
                labels[start : start + size] = label.reshape(-1)
        if not np.isfinite(images).all():
            raise DataError(
                "intensities beyond float16's range (65504): normalise the images or set "
                "data.on_device=false"
            )
        self.device = torch.device(device)
        self.channels, self.count = channels, len(items)
        self.cases = [str(item.get("case", i)) for i, item in enumerate(items)]
        self.images = torch.from_numpy(images).to(self.device)
        self.labels = torch.from_numpy(labels).to(self.device) if labels is not None else None
        self.offsets = torch.from_numpy(offsets).to(self.device)
        # sizes on the host too: a batch's window is chosen without reading the device
        self.host_heights = np.array([s[1] for s in shapes], dtype=np.int64)
        self.host_widths = np.array([s[2] for s in shapes], dtype=np.int64)
        self.heights = torch.from_numpy(self.host_heights).to(self.device)
        self.widths = torch.from_numpy(self.host_widths).to(self.device)

    @property
    def keys(self) -> list[str]:
        """The sample keys held: ``image``, then the views."""
        return list(self.layout)

    def channel(self, key: str) -> int:
        """The (first) channel of ``key`` in the packed images."""
        if key not in self.layout:
            raise DataError(
                f"the device store holds {self.keys}, not {key!r}: the views read a key the "
                "training items do not carry"
            )
        return self.layout[key].start

    def window(self, host_index: Sequence[int] | None = None) -> tuple[int, int]:
        """(height, width) holding every slice of ``host_index`` (all slices if None)."""
        rows = slice(None) if host_index is None else np.asarray(host_index, dtype=np.int64)
        return int(self.host_heights[rows].max()), int(self.host_widths[rows].max())

    @property
    def nbytes(self) -> int:
        labels = self.labels.numel() if self.labels is not None else 0
        return self.images.numel() * self.images.element_size() + labels


# -- views ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewPlan:
    """``TwoViews`` reduced to what the device needs: the sample key each perturbation reads
    (``image``: the raw image, ``identity``; a cached view's ``cache_key``) and the
    probabilities."""

    view_a: str
    view_b: str
    p: float
    gamma_p: float
    gamma_range: tuple[float, float]


def view_plan(views: object) -> tuple[ViewPlan | None, str | None]:
    """The device form of the data module's ``views``, or ``(None, reason)`` when it has none:
    only the identity and pre-computed (``filter.cache=true``) tree filters can be read from the
    store; a filter, blur or noise made per sample runs on the host."""
    from segssl.filters.views import TwoViews, identity

    if views is None:
        return None, None
    if not isinstance(views, TwoViews):
        return None, f"the view maker {type(views).__name__} has no batched device form"
    if getattr(views, "rotate_view_2", False):
        return None, "filter.rotate_view_2=true (network 2's rotated view) runs on the host"
    keys = []
    for name, view in (("view_a", views.view_a), ("view_b", views.view_b)):
        key = getattr(view, "cache_key", None)
        if view is identity:
            keys.append(IMAGE)
        elif key is not None and views.cache:
            keys.append(key)
        elif key is not None:
            return None, (
                "filter.cache=false: the tree filters run per sample on the host (exact, "
                "resized image); set filter.cache=true to hold the filtered views on the device"
            )
        else:
            return None, (
                f"filter.{name} ({type(view).__name__}) is computed per sample on the host; only "
                "the identity and cached tree filters have a device form"
            )
    low, high = (float(v) for v in views.gamma_range)
    plan = ViewPlan(keys[0], keys[1], float(views.p), float(views.gamma_p), (low, high))
    return plan, None


# -- augmentation ---------------------------------------------------------------------------
@dataclass
class AugmentParams:
    """Per-slice draws: ``branch`` (B,) in ROT_FLIP/ROTATE/IDENTITY, ``k`` (B,) quarter turns,
    ``flips`` (B, 2) of axes -2 and -1, ``angle`` (B,) radians."""

    branch: torch.Tensor
    k: torch.Tensor
    flips: torch.Tensor
    angle: torch.Tensor


class BatchSliceAugment:
    """SSL4MIS's 2-D augmentation and the two views, batched on the store's device."""

    def __init__(
        self,
        image_size: int,
        views: ViewPlan | None = None,
        augment: bool = True,
        rotate_degrees: float = ROTATE_DEGREES,
        weights: Sequence[float] = BRANCH_WEIGHTS,
    ) -> None:
        self.size = int(image_size)
        self.views, self.augment, self.rotate_degrees = views, augment, float(rotate_degrees)
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The output's pixel centres (P, 2) in normalised (x, y), and the 16 output
        permutations (16, P) of rot90 k and flips, index ``k * 4 + flip_0 * 2 + flip_1``
        (0 = identity): rot90/flip after sampling equals sampling at permuted positions."""
        if device not in self._tables:
            size = self.size
            grid = identity_grid((size, size)).reshape(-1, 2).to(device)
            pixels = torch.arange(size * size).view(size, size)
            perms = []
            for k in range(4):
                for f0 in (0, 1):
                    for f1 in (0, 1):
                        moved = torch.rot90(pixels, k, dims=(-2, -1))
                        dims = [d for d, f in ((-2, f0), (-1, f1)) if f]
                        perms.append((torch.flip(moved, dims) if dims else moved).reshape(-1))
            self._tables[device] = (grid, torch.stack(perms).to(device))
        return self._tables[device]

    def draw(self, n: int, generator: torch.Generator, device: torch.device) -> AugmentParams:
        """Per-slice parameters, as ``RandSliceAugmentd.randomize`` draws them."""

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=device)

        u = rand(n)
        first = self.weights[0]
        branch = torch.where(
            u < first,
            ROT_FLIP,
            torch.where(u < first + self.weights[1], ROTATE, IDENTITY),
        )
        if not self.augment:
            branch = torch.full_like(branch, IDENTITY)
        k = torch.randint(0, 4, (n,), generator=generator, device=device)
        flips = rand(n, 2) < 0.5
        degrees = (rand(n) * 2 - 1) * self.rotate_degrees
        return AugmentParams(branch, k, flips, torch.deg2rad(degrees))

    def positions(
        self, store: SliceStore, index: torch.Tensor, params: AugmentParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Source pixel coordinates (B, P, 2) as (x, y) of every output pixel in its slice, and
        the slices' (width, height) (B, 1, 2): ``grid_sample``'s unnormalisation with
        ``align_corners=False``, clamped to the slice without rotation (border padding)."""
        grid0, perms = self.tables(store.device)
        flips = params.flips.long()
        combo = params.k * 4 + flips[:, 0] * 2 + flips[:, 1]
        combo = torch.where(params.branch == ROT_FLIP, combo, 0)
        order = perms.index_select(0, combo).reshape(-1)
        grid = grid0.index_select(0, order).view(combo.shape[0], -1, 2)  # (B, P, 2)
        rotate = params.branch == ROTATE
        angle = torch.where(rotate, params.angle, torch.zeros_like(params.angle))
        c, s = torch.cos(angle), torch.sin(angle)
        rotation = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
        grid = torch.bmm(grid, rotation)  # as MONAI's Rotate; exact for angle 0
        extent = torch.stack([store.widths[index], store.heights[index]], -1)
        extent = extent.to(grid.dtype)[:, None]
        xy = ((grid + 1) * extent - 1) / 2
        still = ~rotate.view(-1, 1, 1)
        xy = torch.where(still, torch.minimum(xy.clamp_min(0), extent - 1), xy)
        # already at the training size: the per-sample path copies the pixels, no resampling
        native = still & (extent == self.size).all(-1, keepdim=True)
        return torch.where(native, xy.round(), xy), extent

    def geometry(
        self,
        store: SliceStore,
        index: torch.Tensor,
        params: AugmentParams,
        window: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (B, C, S, S) float32, bilinear with zeros outside the slice, and labels
        (B, 1, S, S) long, nearest (round half to even, as ``grid_sample``), or None.

        The slices are gathered into a zero-padded (B, C, *window) batch (``window``: a
        (height, width) holding them all, ``store.window``) and resampled by one
        ``grid_sample``; the zeros beyond each slice are exactly the per-sample path's zeros
        padding, and border clamping happened on the positions. Labels are gathered directly
        at the rounded positions (no float round trip that could move a tie)."""
        xy, extent = self.positions(store, index, params)
        n, size, last = index.shape[0], self.size, store.images.shape[0] - 1
        height, width = window or store.window()
        device = store.device
        offset = store.offsets[index]
        rows = torch.arange(height, device=device).view(1, height, 1)
        columns = torch.arange(width, device=device).view(1, 1, width)
        slice_width = store.widths[index].view(-1, 1, 1)
        inside = (rows < store.heights[index].view(-1, 1, 1)) & (columns < slice_width)
        where = (offset.view(-1, 1, 1) + rows * slice_width + columns).clamp_(0, last)
        pixels = store.images.index_select(0, where.reshape(-1))
        pixels = pixels.view(n, height, width, store.channels) * inside[..., None]
        pixels = pixels.permute(0, 3, 1, 2).float()
        # the window's normalised coordinates (Python numbers: no host-to-device copy)
        grid = torch.stack([(2 * xy[..., 0] + 1) / width, (2 * xy[..., 1] + 1) / height], -1)
        grid = (grid - 1).view(n, size, size, 2)
        image = F.grid_sample(
            pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        if store.labels is None:
            return image, None
        nearest = xy.round()
        inside = ((nearest >= 0) & (nearest <= extent - 1)).all(-1)
        nearest = nearest.long()
        flat = offset[:, None] + nearest[..., 1] * store.widths[index][:, None] + nearest[..., 0]
        label = torch.where(inside, store.labels[flat.clamp_(0, last)], 0).long()
        return image, label.view(n, 1, size, size)

    def make_views(
        self, image: torch.Tensor, generator: torch.Generator, store: SliceStore
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image_1``, ``image_2`` (B, 1, S, S) from the augmented channels of ``store``'s
        keys, as ``TwoViews`` with cached views: perturbation pair with probability p, swapped
        50/50, then each view's gamma (probability gamma_p) on its own range."""
        plan = self.views
        n, device = image.shape[0], image.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=device)

        low, high = plan.gamma_range
        gamma_on = rand(2, n) < plan.gamma_p
        gammas = low + (high - low) * rand(2, n)
        perturb, swap = rand(n) < plan.p, rand(n) < 0.5
        a = torch.full((n,), store.channel(plan.view_a), device=device)
        b = torch.full((n,), store.channel(plan.view_b), device=device)
        chosen = [torch.where(swap, b, a), torch.where(swap, a, b)]
        raw = store.channel(IMAGE)
        views = []
        for k in range(2):
            channel = torch.where(perturb, chosen[k], raw).view(n, 1, 1, 1)
            view = image.gather(1, channel.expand(n, 1, *image.shape[2:]))
            views.append(batch_gamma(view, gammas[k], gamma_on[k]))
        return views[0], views[1]

    def __call__(
        self,
        store: SliceStore,
        index: torch.Tensor,
        generator: torch.Generator,
        cases: list[str] | None = None,
        window: tuple[int, int] | None = None,
    ) -> dict:
        """One stream's batch with the loader path's keys: ``image`` (B, C, S, S) float32,
        ``image_1``/``image_2`` with views, ``label`` (B, 1, S, S) long when the store has
        labels, ``case``; the views' keys themselves stay out, as ``TwoViews`` drops them."""
        params = self.draw(index.shape[0], generator, store.device)
        image, label = self.geometry(store, index, params, window)
        batch: dict = {}
        if self.views is not None:
            batch["image_1"], batch["image_2"] = self.make_views(image, generator, store)
        if len(store.layout) > 1:  # the image's channels only
            image = image[:, store.layout[IMAGE]].contiguous()
        batch["image"] = image
        if label is not None:
            batch["label"] = label
        if cases is not None:
            batch["case"] = cases
        return batch


def batch_gamma(view: torch.Tensor, gamma: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """``views.random_gamma`` per image of a (B, 1, H, W) batch where ``apply`` (B,) holds."""
    dims = tuple(range(1, view.ndim))
    low, high = view.amin(dims, keepdim=True), view.amax(dims, keepdim=True)
    span = high - low
    shape = (-1,) + (1,) * (view.ndim - 1)
    apply = apply.view(shape) & (span > 0)
    scaled = (view - low) * (1.0 / torch.where(span > 0, span, torch.ones_like(span)))
    out = scaled.pow(gamma.view(shape)) * span + low
    return torch.where(apply, out, view)


# -- the training iterable -----------------------------------------------------------------
class _Cursor:
    """One stream's slice order: shuffled without replacement, reshuffled when used up; a
    stream smaller than its batch gives all its slices each time (the loaders' ``drop_last``
    only applies when a full batch exists)."""

    def __init__(self, store: SliceStore, batch_size: int, generator: torch.Generator) -> None:
        self.store, self.generator = store, generator
        self.batch = min(batch_size, store.count)
        self.position = store.count  # shuffle on first use

    def next(self) -> tuple[torch.Tensor, list[int]]:
        """The next batch's slice indices, on the device and on the host."""
        if self.position + self.batch > self.store.count:
            self.order = torch.randperm(self.store.count, generator=self.generator)
            staged = self.order
            if self.store.device.type == "cuda":  # pinned: the copy does not wait for the GPU
                staged = self._pinned = self.order.pin_memory()
            self.order_device = staged.to(self.store.device, non_blocking=True)
            self.position = 0
        start, self.position = self.position, self.position + self.batch
        return self.order_device[start : self.position], self.order[start : self.position].tolist()


class DeviceBatches:
    """The training batches of the device path: an iterable of ``len`` steps per pass, each
    ``{stream: batch}`` as the loader path's ``CombinedLoader`` gives (``labeled`` and, if
    used, ``unlabeled``), already on the device."""

    def __init__(
        self,
        streams: dict[str, tuple[SliceStore, int]],
        augment: BatchSliceAugment,
        length: int,
        seed_offset: int = 0,
    ) -> None:
        self.streams, self.augment = streams, augment
        self.length, self.seed_offset = int(length), int(seed_offset)

    @property
    def device(self) -> torch.device:
        return next(iter(self.streams.values()))[0].device

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[dict[str, dict]]:
        seed = int(torch.randint(0, 2**62, (1,)).item()) + 1_000_003 * self.seed_offset
        host = torch.Generator().manual_seed(seed)
        device = torch.Generator(device=self.device).manual_seed(seed)
        cursors = {name: _Cursor(store, size, host) for name, (store, size) in self.streams.items()}
        for _ in range(self.length):
            batch = {}
            for name, cursor in cursors.items():
                store = self.streams[name][0]
                index, host = cursor.next()
                cases = [store.cases[i] for i in host]
                batch[name] = self.augment(store, index, device, cases, store.window(host))
            yield batch
