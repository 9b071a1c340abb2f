"""ABD's settings for DSAIF views (``displace_on``, ``views_on_labeled``, ``strong_on_filtered``):
which pixels each network sees in each branch, that the defaults are today's ABD to the bit, that
with the views of ``filter=none`` (the raw image) every setting changes nothing, random draws
included, and that each trains on the synthetic data with ``filter=dsaif``."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from segssl.methods import AdaptiveBidirectionalDisplacement
from segssl.methods import abd as abd_module
from segssl.methods.losses import sigmoid_rampup
from segssl.methods.mixing import check_grid, inverse_displacement, reliable_displacement
from segssl.methods.region_losses import dice_ce_loss, soft_dice_loss
from segssl.methods.steps import resolve_steps
from tests.conftest import TINY, compose_config
from tests.helpers.networks import Recorder
from tests.helpers.training import training_only_trainer

MODEL = {"_target_": "segssl.models.unet.UNet", "in_channels": 1, "out_channels": 4,
         "features": [4, 4, 8, 8, 8]}  # fmt: skip
SIZE, N = 16, 2  # image size; labeled and unlabeled images per batch
# distinct constants: a displaced pixel tells where it comes from (Cutout noise is 0 or 1)
RAW, VIEW_1, VIEW_2 = 0.25, 0.5, 0.75
VARIANTS = {
    "displace_on_raw": {"displace_on": "raw"},
    "raw_labeled": {"views_on_labeled": False},
    "no_strong_on_filtered": {"strong_on_filtered": False},
}
ALL_VARIANTS = {"displace_on": "raw", "views_on_labeled": False, "strong_on_filtered": False}


def make_abd(
    step: int = 10, recorders: bool = False, **kwargs
) -> AdaptiveBidirectionalDisplacement:
    torch.manual_seed(1)
    method = AdaptiveBidirectionalDisplacement(
        model=MODEL,
        num_classes=4,
        class_names=["RV", "Myo", "LV"],
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.01},
        evaluation={"image_size": SIZE},
        rampup_steps=30,
        **kwargs,
    )
    method._trainer = SimpleNamespace(max_steps=30, global_step=step)
    if recorders:
        for name in method.network_names:
            method.networks[name] = Recorder(torch.randn(2 * N, 4, SIZE, SIZE))
    return method


def random_batch(views: bool) -> dict:
    """Random images; ``views=False``: image_1 = image_2 = image, as ``filter=none`` gives."""
    g = torch.Generator().manual_seed(0)

    def part(labeled: bool) -> dict:
        raw = torch.rand(N, 1, SIZE, SIZE, generator=g)
        out = {"image": raw, "image_1": raw.clone(), "image_2": raw.clone()}
        if views:
            out["image_1"] = torch.rand(N, 1, SIZE, SIZE, generator=g)
            out["image_2"][1] = raw[1] ** 2  # one row changed by the views, one not
        if labeled:
            out["label"] = torch.randint(0, 4, (N, 1, SIZE, SIZE), generator=g)
        return out

    return {"labeled": part(True), "unlabeled": part(False)}


def constant_batch(filtered_rows: tuple[int, ...] = tuple(range(N))) -> dict:
    """raw, image_1 and image_2 of distinct constants; image_2 equals the raw image outside
    ``filtered_rows``. Labels all 2 (so a Cutout box shows as background)."""

    def part(labeled: bool) -> dict:
        image_2 = torch.full((N, 1, SIZE, SIZE), RAW)
        image_2[list(filtered_rows)] = VIEW_2
        out = {
            "image": torch.full((N, 1, SIZE, SIZE), RAW),
            "image_1": torch.full((N, 1, SIZE, SIZE), VIEW_1),
            "image_2": image_2,
        }
        if labeled:
            out["label"] = torch.full((N, 1, SIZE, SIZE), 2)
        return out

    return {"labeled": part(True), "unlabeled": part(False)}


def published_losses(method: AdaptiveBidirectionalDisplacement, batch: dict) -> dict:
    """ABD's ``training_losses`` as it was before these settings, frozen as the reference."""
    labeled, unlabeled = batch["labeled"], batch["unlabeled"]
    n = labeled["image_1"].shape[0]
    check_grid(*labeled["image_1"].shape[-2:], method.grid)
    label_1 = labeled["label"][:, 0]
    view_1 = torch.cat([labeled["image_1"], unlabeled["image_1"]])
    view_2, label_2 = method.strong_view(
        torch.cat([labeled["image_2"], unlabeled["image_2"]]), label_1
    )
    logits_1, logits_2 = method.run_network("net1", view_1), method.run_network("net2", view_2)
    probs_1, probs_2 = torch.softmax(logits_1.float(), 1), torch.softmax(logits_2.float(), 1)
    conf_1, hard_1 = probs_1.detach().max(1)
    conf_2, hard_2 = probs_2.detach().max(1)
    sup_1, sup_2 = dice_ce_loss(logits_1[:n], label_1), dice_ce_loss(logits_2[:n], label_2)
    cps = soft_dice_loss(probs_1[n:], hard_2[n:]) + soft_dice_loss(probs_2[n:], hard_1[n:])
    new_1, new_2, _ = reliable_displacement(
        view_1[n:, 0], view_2[n:, 0], conf_1[n:], conf_2[n:],
        logits_1[n:].detach(), logits_2[n:].detach(), method.grid, method.top_k,
    )  # fmt: skip
    displaced = torch.cat([new_1, new_2])[:, None]
    out_1 = torch.softmax(method.run_network("net1", displaced).float(), 1)
    out_2 = torch.softmax(method.run_network("net2", displaced).float(), 1)
    cps_r = soft_dice_loss(out_1, out_2.detach().argmax(1)) + soft_dice_loss(
        out_2, out_1.detach().argmax(1)
    )
    weight = method.consistency * sigmoid_rampup(method.global_step, method.rampup_steps)
    loss = sup_1 + sup_2 + weight * (cps + cps_r)
    losses = {"sup_1": sup_1, "sup_2": sup_2, "cps": cps, "cps_displaced": cps_r}
    until = resolve_steps(method.labeled_until, int(method.trainer.max_steps), "labeled_until")
    if method.global_step <= until:
        img_1, img_2, lab_1, lab_2 = inverse_displacement(
            view_1[:n, 0], view_2[:n, 0], label_1, label_2, conf_1[:n], conf_2[:n],
            method.grid, method.labeled_p,
        )  # fmt: skip
        images, labels = torch.cat([img_1, img_2])[:, None], torch.cat([lab_1, lab_2])
        sup_i = dice_ce_loss(method.run_network("net1", images), labels) + dice_ce_loss(
            method.run_network("net2", images), labels
        )
        loss = loss + method.labeled_weight * sup_i
        losses["sup_displaced"] = sup_i
    losses["loss"] = loss
    return losses


def run(method: AdaptiveBidirectionalDisplacement, batch: dict, seed: int = 7) -> dict:
    torch.manual_seed(seed)
    return method.training_losses(batch)


def assert_equal_losses(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), (key, a[key], b[key])


def inputs(method: AdaptiveBidirectionalDisplacement, name: str) -> list[torch.Tensor]:
    """Network ``name``'s inputs: direct views, ABD-R images, ABD-I images."""
    return method.networks[name].inputs


def near(x: torch.Tensor, values: tuple[float, ...]) -> torch.Tensor:
    return torch.stack([(x - v).abs() < 1e-6 for v in values]).any(0)


# -- defaults --------------------------------------------------------------------------------------
@pytest.mark.parametrize("views", [True, False])
@pytest.mark.parametrize("step", [10, 25])  # with and without ABD-I
def test_defaults_are_todays_abd_to_the_bit(views, step):
    losses = run(make_abd(step), random_batch(views))
    method = make_abd(step)
    torch.manual_seed(7)
    reference = published_losses(method, random_batch(views))
    assert_equal_losses(losses, reference)
    # the defaults read no raw image: a batch without one trains as before
    batch = random_batch(views)
    for part in batch.values():
        del part["image"]
    assert_equal_losses(run(make_abd(step), batch), reference)


@pytest.mark.parametrize("options", [*VARIANTS.values(), ALL_VARIANTS], ids=[*VARIANTS, "all"])
def test_every_setting_changes_nothing_with_the_views_of_filter_none(options):
    default, variant = make_abd(recorders=True), make_abd(recorders=True, **options)
    expected = run(default, random_batch(views=False))
    state = torch.get_rng_state()
    assert_equal_losses(run(variant, random_batch(views=False)), expected)
    assert torch.equal(torch.get_rng_state(), state)  # the same random draws, no more
    for name in ("net1", "net2"):
        seen, before = inputs(variant, name), inputs(default, name)
        assert len(seen) == len(before) == 3
        assert all(torch.equal(a, b) for a, b in zip(seen, before, strict=True))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="method.displace_on='both'"):
        make_abd(displace_on="both")
    with pytest.raises(ValueError, match="method.views_on_labeled='no'"):
        make_abd(views_on_labeled="no")
    with pytest.raises(ValueError, match="method.strong_on_filtered=1"):
        make_abd(strong_on_filtered=1)
    batch = constant_batch()
    for part in batch.values():
        del part["image"]
    for options in VARIANTS.values():
        with pytest.raises(ValueError, match="read the raw image"):
            run(make_abd(recorders=True, **options), batch)


# -- H1: displace_on -------------------------------------------------------------------------------
def test_displace_on_raw_builds_the_displaced_images_from_the_raw_image_only():
    options = {"cutout_p": 1.0, "jitter": 0.0, "labeled_p": 1.0}
    method = make_abd(recorders=True, displace_on="raw", **options)
    run(method, constant_batch())
    for name in ("net1", "net2"):
        direct, abd_r, abd_i = inputs(method, name)
        for displaced in (abd_r, abd_i):
            assert near(displaced, (RAW, 0.0, 1.0)).all(), name  # raw, or its Cutout noise
            assert near(displaced, (RAW,)).any()
    # the supervised and CPS branch keeps the views
    assert (inputs(method, "net1")[0] == VIEW_1).all()
    assert near(inputs(method, "net2")[0], (VIEW_2, 0.0, 1.0)).all()
    # the default displaces the views: both views show in the displaced images
    default = make_abd(recorders=True, **options)
    run(default, constant_batch())
    for displaced in inputs(default, "net1")[1:]:
        assert near(displaced, (VIEW_1,)).any() and near(displaced, (VIEW_2,)).any()
        assert not near(displaced, (RAW,)).any()


def test_the_raw_pair_gets_network_2s_cutout_box_and_the_random_stream_stays():
    method = make_abd(cutout_p=1.0, jitter=0.0)
    labels = torch.full((N, SIZE, SIZE), 2)
    raw, view = torch.full((2 * N, 1, SIZE, SIZE), RAW), torch.full((2 * N, 1, SIZE, SIZE), VIEW_2)
    torch.manual_seed(5)
    replayed, replayed_labels = method.replayed_strong_view(raw, labels)
    strong, strong_labels = method.strong_view(view, labels)
    after = torch.get_rng_state()
    torch.manual_seed(5)
    method.strong_view(view, labels)
    assert torch.equal(torch.get_rng_state(), after)  # as if the replay had drawn nothing
    box = near(strong[:, 0], (0.0, 1.0))
    assert box.any() and torch.equal(box, near(replayed[:, 0], (0.0, 1.0)))
    assert torch.allclose(replayed[:, 0][box], strong[:, 0][box])  # the same noise
    assert near(replayed[:, 0][~box], (RAW,)).all() and near(strong[:, 0][~box], (VIEW_2,)).all()
    assert torch.equal(replayed_labels, strong_labels) and torch.equal(strong_labels == 0, box[:N])


# -- H2: views_on_labeled --------------------------------------------------------------------------
def test_views_off_labeled_show_both_networks_the_raw_labeled_image():
    options = {"cutout_p": 0.0, "jitter": 0.0, "labeled_p": 1.0}  # strong view: the image itself
    method = make_abd(recorders=True, views_on_labeled=False, **options)
    run(method, constant_batch())
    for name, unlabeled_view in (("net1", VIEW_1), ("net2", VIEW_2)):
        direct, _, abd_i = inputs(method, name)
        assert (direct[:N] == RAW).all() and (direct[N:] == unlabeled_view).all(), name
        assert (abd_i == RAW).all()  # ABD-I displaces between the two raw labeled images
    default = make_abd(recorders=True, **options)
    run(default, constant_batch())
    assert (inputs(default, "net1")[0][:N] == VIEW_1).all()
    assert (inputs(default, "net2")[0][:N] == VIEW_2).all()


# -- H3: strong_on_filtered ------------------------------------------------------------------------
@pytest.mark.parametrize("strong_on_filtered", [True, False])
def test_network_2s_filtered_rows_skip_cutout_and_jitter(strong_on_filtered, monkeypatch):
    supervised = []

    def recording_loss(logits, labels):
        supervised.append(labels.clone())
        return dice_ce_loss(logits, labels)

    monkeypatch.setattr(abd_module, "dice_ce_loss", recording_loss)
    method = make_abd(
        recorders=True, strong_on_filtered=strong_on_filtered, cutout_p=1.0, jitter=0.8
    )
    run(method, constant_batch(filtered_rows=(1,)))  # row 0: the raw image, row 1: changed
    net2, label_2 = inputs(method, "net2")[0], supervised[1]  # losses: sup_1, then sup_2
    for row in (0, N):  # equal to the raw image (labeled, unlabeled): cut out either way
        assert near(net2[row], (0.0, 1.0)).any()
    assert (label_2[0] == 0).any()
    for row in (1, N + 1):  # changed by the views: as they are without strong_on_filtered
        assert (net2[row] == VIEW_2).all() != strong_on_filtered
    assert (label_2[1] == 2).all() != strong_on_filtered
    assert (inputs(method, "net1")[0] == VIEW_1).all()  # network 1 untouched either way


# -- training on the synthetic data ----------------------------------------------------------------
@pytest.mark.parametrize(
    "override",
    [
        "method.displace_on=raw",
        "method.views_on_labeled=false",
        "method.strong_on_filtered=false",
    ],
)
def test_each_variant_trains_with_dsaif_views(override, tmp_path, tiny_data_dir):
    from segssl.commands.train import build_data_and_method

    steps = 2
    overrides = [*TINY, "method=abd", "filter=dsaif", override, f"trainer.max_steps={steps}"]
    cfg = compose_config("train", overrides, tmp_path / "run", tiny_data_dir)
    pl.seed_everything(0)
    datamodule, module = build_data_and_method(cfg)
    key, value = override.removeprefix("method.").split("=")
    assert str(getattr(module, key)).lower() == value
    losses: list[float] = []

    class Losses(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))

    trainer = training_only_trainer(steps, callbacks=[Losses()])
    trainer.fit(module, datamodule=datamodule)
    assert len(losses) == steps and all(math.isfinite(v) for v in losses)
