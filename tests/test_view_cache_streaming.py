"""The view cache streams (issue 27 item 4): built one case at a time, read lazily one case per
item through memory maps, a killed build never trusted, keyed by what changes the images, and
the views equal to the filter run on the same case."""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path

import numpy as np

import segssl.data.view_cache as view_cache
from segssl.data.view_cache import CachedItems, ViewCache, open_or_build
from tests.test_la import fake_la

REPO = Path(__file__).resolve().parents[1]


def images_of(count: int, shape=(6, 5)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"c{i}": rng.normal(size=shape).astype(np.float32) for i in range(count)}


def plus_minus(image: np.ndarray) -> dict[str, np.ndarray]:
    return {"max": image + 1, "min": image - 1}


def mapped(array: np.ndarray) -> bool:
    """Whether ``array``'s memory is a memory map (walking its bases)."""
    base = array
    while base is not None:
        if isinstance(base, mmap.mmap):
            return True
        base = (
            getattr(base, "base", None)
            if isinstance(base, np.ndarray)
            else getattr(base, "obj", None)
        )
    return False


class LiveArrays:
    """Counts the arrays of ``track``ed kinds alive at once (weak references)."""

    def __init__(self) -> None:
        self.alive, self.peak = 0, 0

    def track(self, array: np.ndarray) -> np.ndarray:
        self.alive += 1
        self.peak = max(self.peak, self.alive)
        weakref.finalize(array, self._gone)
        return array

    def _gone(self) -> None:
        self.alive -= 1


def test_an_in_process_build_holds_one_case_at_a_time(tmp_path):
    images, live = images_of(40), LiveArrays()

    def load(case: str) -> np.ndarray:  # a fresh array, as a reader of a file gives
        return live.track(images[case].copy())

    def precompute(image: np.ndarray) -> dict[str, np.ndarray]:
        return {k: live.track(v) for k, v in plus_minus(image).items()}

    cache = open_or_build(tmp_path, "key", list(images), load, precompute, num_workers=1)
    assert len(cache) == 40
    # one case's image and its two views at most (today: all 40 cases' views, then the file)
    assert live.peak <= 3, live.peak


def test_a_parallel_build_hands_the_parent_a_few_cases_at_a_time(tmp_path, monkeypatch):
    """With forked workers the parent receives one stacked case per finished job and writes it
    out before the next: it never gathers the dataset."""
    images, live = images_of(30), LiveArrays()
    compute = view_cache.compute_views

    def counted(*args, **kwargs):
        for case, stacked, names in compute(*args, **kwargs):
            yield case, live.track(stacked), names

    monkeypatch.setattr(view_cache, "compute_views", counted)
    cache = open_or_build(tmp_path, "key", list(images), images.get, plus_minus, num_workers=2)
    assert live.peak <= 2, live.peak
    for case, image in images.items():  # every case arrived, whatever the completion order
        read = cache.read(case)
        assert list(read) == ["image", "max", "min"]
        for key, expected in (("image", image), ("max", image + 1), ("min", image - 1)):
            np.testing.assert_array_equal(read[key], expected[None])


def test_items_are_read_lazily_one_case_per_item_through_memory_maps(tmp_path, monkeypatch):
    images = images_of(12)
    cache = open_or_build(tmp_path, "key", list(images), images.get, plus_minus, num_workers=1)
    items = CachedItems([{"case": c, "label": np.zeros(1)} for c in images], cache)
    # nothing is read when the cache is opened: it holds offsets, the items hold no image
    assert all("image" not in item for item in items.items)
    assert all(isinstance(e.offset, int) for e in cache.extents.values())
    reads: list[str] = []
    read = ViewCache.read
    monkeypatch.setattr(
        ViewCache, "read", lambda self, case: reads.append(case) or read(self, case)
    )
    item = items[7]
    assert reads == ["c7"]  # only the item taken
    assert set(item) == {"case", "label", "image", "max", "min"}  # each view under its name
    for key in ("image", "max", "min"):
        assert mapped(item[key]) and item[key].flags.writeable and item[key].shape == (1, 6, 5)
    np.testing.assert_array_equal(item["image"][0], images["c7"])
    np.testing.assert_array_equal(item["min"][0], images["c7"] - 1)
    item["image"][0] = 99.0  # copy-on-write: the cache file is unchanged
    np.testing.assert_array_equal(items[7]["image"][0], images["c7"])
    assert len(items) == 12 and [i["case"] for i in items[2:4]] == ["c2", "c3"]


def test_loader_workers_read_the_shared_cache(tmp_path):
    """Forked loader workers inherit the open cache (and the page cache), nothing copied."""
    from torch.utils.data import DataLoader

    images = images_of(8)
    cache = open_or_build(tmp_path, "key", list(images), images.get, plus_minus, num_workers=1)
    items = CachedItems([{"case": c} for c in images], cache)
    loader = DataLoader(items, batch_size=4, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    assert [b["image"].shape for b in batches] == [(4, 1, 6, 5)] * 2
    got = {c: b["min"][k].numpy() for b in batches for k, c in enumerate(b["case"])}
    for case, image in images.items():
        np.testing.assert_array_equal(got[case][0], image - 1)


def test_concurrent_builders_build_once(tmp_path):
    """Two DDP ranks (here: threads, each with its own lock) starting together: one builds,
    the other waits and reads the finished cache."""
    images, loads = images_of(6), []

    def load(case: str) -> np.ndarray:
        loads.append(case)
        time.sleep(0.05)
        return images[case]

    caches = []
    threads = [
        threading.Thread(
            target=lambda: caches.append(
                open_or_build(tmp_path, "k", list(images), load, plus_minus, 1)
            )  # fmt: skip
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(caches) == 2 and sorted(loads) == sorted(images)  # each case loaded once
    assert [p.name for p in tmp_path.iterdir()] == ["k.h5"]


KILLED_BUILD = """
import os, signal, sys
from pathlib import Path
import numpy as np
from segssl.data.view_cache import open_or_build
images = {f"c{i}": np.full((4, 4), i, np.float32) for i in range(10)}
done = []
def dying(image):
    done.append(1)
    if len(done) == 6:  # five cases are written into the file by now
        os.kill(os.getpid(), signal.SIGKILL)
    return {"max": image + 1}
open_or_build(Path(sys.argv[1]), "key", list(images), images.get, dying, 1)
"""


def test_a_build_killed_mid_way_is_not_trusted(tmp_path):
    cache_dir = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_BUILD), str(cache_dir)], cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr
    left = list(cache_dir.iterdir())
    assert len(left) == 1 and left[0].name.startswith(".key.h5.")  # the temporary, half full
    assert left[0].stat().st_size > 0
    images = {f"c{i}": np.full((4, 4), i, np.float32) for i in range(10)}
    loads: list[str] = []

    def load(case: str) -> np.ndarray:
        loads.append(case)
        return images[case]

    cache = open_or_build(cache_dir, "key", list(images), load, lambda im: {"max": im * 3}, 1)
    assert sorted(loads) == sorted(images)  # every case rebuilt, none taken from the half file
    assert [p.name for p in cache_dir.iterdir()] == ["key.h5"]  # the temporary removed
    assert [cache.read(c)["max"][0, 0, 0] for c in images] == [3.0 * i for i in range(10)]


def test_a_cache_missing_a_case_is_rebuilt(tmp_path):
    images = images_of(3)
    open_or_build(tmp_path, "key", ["c0", "c1"], images.get, plus_minus, 1)
    cache = open_or_build(tmp_path, "key", list(images), images.get, plus_minus, 1)
    assert cache.cases == ["c0", "c1", "c2"]


# -- through the data module, on a 3-D LA folder ---------------------------------------------
def la_module(root: Path, cache_dir: Path, workers: int = 0, **layout_options):
    from segssl.data.datamodule import SemiSupervisedDataModule
    from segssl.filters.views import dsaif_views

    views = dsaif_views(area_threshold=3, cache=True, cache_dir=str(cache_dir))
    return SemiSupervisedDataModule(
        root=root, num_classes=2, class_names=["LA"], labeled=2, image_size=None, batch_size=2,
        labeled_batch_size=1, name="la", layout="uamt", patch_size=[8, 8, 6], views=views,
        num_workers=workers, layout_options=layout_options,
    )  # fmt: skip


def test_la_views_equal_the_filter_on_the_same_case_and_no_image_is_held(tmp_path):
    from segssl.data.layouts import make_layout
    from segssl.filters import tree_filter

    root = fake_la(tmp_path / "la", cases=6, shape=(14, 12, 10))
    module = la_module(root, tmp_path / "views")
    module.setup("fit")
    streams = module._train
    assert all(isinstance(s, CachedItems) for s in streams.values())
    assert all("image" not in item for s in streams.values() for item in s.items)
    assert "label" in streams["labeled"].items[0] and "label" not in streams["unlabeled"].items[0]
    layout = make_layout("uamt", root)
    for stream in streams.values():
        for item in stream:
            raw = layout.load("train", item["case"], num_classes=2, require_label=False).image
            for key in ("image", "image_max", "image_min"):
                assert mapped(item[key]) and item[key].shape == (1, 14, 12, 10)
            np.testing.assert_array_equal(item["image"][0], raw)
            np.testing.assert_array_equal(item["image_max"][0], tree_filter(raw, "max", 3))
            np.testing.assert_array_equal(item["image_min"][0], tree_filter(raw, "min", 3))
    batch = next(iter(module.train_dataloader()))[0]
    assert batch["labeled"]["image_1"].shape == (1, 1, 8, 8, 6)
    assert set(batch["labeled"]) == {"image", "image_1", "image_2", "label", "case"}
    assert batch["unlabeled"]["image_2"].shape == (1, 1, 8, 8, 6)


def test_the_key_separates_layout_options_and_ignores_where_caches_live(tmp_path):
    root = fake_la(tmp_path / "la", cases=4, shape=(10, 10, 6))
    views = tmp_path / "views"
    la_module(root, views).setup("fit")
    la_module(root, views, spacing=[1.0, 1.0, 2.0]).setup("fit")  # a layout option: its own key
    assert len(list(views.glob("*.h5"))) == 2
    la_module(root, views, workers=2).setup("fit")  # loader workers change no image: reused
    assert len(list(views.glob("*.h5"))) == 2
    # a changed image (touched file) makes a new cache, never the stale views
    image = root / "2018LA_Seg_Training Set" / "CASE00" / "mri_norm2.h5"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    la_module(root, views).setup("fit")
    assert len(list(views.glob("*.h5"))) == 3
