"""The one LightningModule base every method shares: networks, optimiser, poly schedule,
validation and test through ``segssl.evaluation``. A method subclass only says which networks
it trains, which models are evaluated, and how the loss is made from a batch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from itertools import combinations
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from segssl.evaluation.evaluator import VolumeEvaluator
from segssl.evaluation.inference import ensemble_predict_fn
from segssl.evaluation.overlap_metrics import Agreement, ErrorConsensus, ForegroundDice
from segssl.models.speed import (
    SPEED_KEYS,
    channels_last_option,
    compile_mode,
    use_channels_last,
)

PredictFn = Callable[[torch.Tensor], torch.Tensor]


PLAIN_LEAVES = (bool, int, float, str, type(None))


def plain(value: Any, key: str = "method") -> Any:
    """``value`` as plain Python data (dicts, lists, tuples, numbers, strings, None): the only
    kinds a checkpoint may hold to load with ``torch.load(weights_only=True)``. OmegaConf nodes
    are converted; anything else (an array, a module, a path) is refused with its key named."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(v, f"{key}[{i}]") for i, v in enumerate(value))
    if type(value) not in PLAIN_LEAVES:  # exact: numpy's float64 is a float, yet not data
        raise TypeError(
            f"{key}={value!r}: a method's settings must be plain data (numbers, strings, lists, "
            f"dicts), not a {type(value).__name__}, so its checkpoints load as data"
        )
    return value


def build_network(config: Mapping[str, Any]) -> nn.Module:
    """A network from its config; ``channels_last`` and ``compile`` are options of ours."""
    return instantiate({k: v for k, v in config.items() if k not in SPEED_KEYS})


def softmax_of(network: Callable[[torch.Tensor], torch.Tensor]) -> PredictFn:
    return lambda x: torch.softmax(network(x).float(), dim=1)


class SegmentationMethod(pl.LightningModule):
    """Base of all methods. A subclass sets ``network_names``, ``trained_networks``,
    ``uses_unlabeled`` and ``selection_model``, takes its own settings as keyword arguments
    (passing the rest on to this constructor), and implements ``training_losses``, whose first
    key ``loss`` is optimised and every key logged. Every constructor argument of the class
    chain is saved once, as plain data, in ``hparams`` and the checkpoints (``segssl test``
    rebuilds the method from them): a new setting is one keyword argument and one line of the
    method's YAML.

    Args:
        model: network config with ``_target_`` (``conf/model/``), plus our speed options
            ``channels_last`` and ``compile``; the networks of ``network_names`` are built from it.
        num_classes: number of classes including background (output channels).
        class_names: names of the foreground classes, in label order (metrics, per-class logs).
        optimizer: optimiser config with ``_target_`` (e.g. ``torch.optim.SGD``) and its
            arguments except the parameters; one parameter group per trained network.
        evaluation: keyword arguments of ``segssl.evaluation.evaluator.VolumeEvaluator``
            (``conf/evaluation/``): slice-wise or sliding-window inference, distance units.
        poly_power: exponent of the poly learning-rate decay over ``trainer.max_steps``
            (0 keeps the rate constant).
        model_2: another network config for the second network of a pair (heterogeneous
            mutual teaching); ``None`` builds every network from ``model``.
    """

    network_names: tuple[str, ...] = ("net",)
    # the networks trained with gradients (``trainable()``, one parameter group each; a mean
    # teacher's teacher is not): all of network_names unless a class declares fewer. The memory
    # estimates of the settings check and the planner read it without building the method
    trained_networks: ClassVar[tuple[str, ...]] = ("net",)
    uses_unlabeled: bool = False
    # the model checkpoints are selected on (validation) and whose Dice is the run's headline;
    # stored in results.json so the report needs no table of methods
    selection_model: str = "net"
    # whether training_losses rotates network 2's logits back (``rotate_back_view_2``) when the
    # views rotate network 2's input (filter.rotate_view_2=true); other methods refuse such views
    rotates_view_2_back: bool = False

    def __init__(
        self,
        model: Mapping[str, Any],
        num_classes: int,
        class_names: Sequence[str],
        optimizer: Mapping[str, Any],
        evaluation: Mapping[str, Any],
        poly_power: float = 0.9,
        model_2: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # the first call collects every constructor argument of the subclass chain; the second
        # stores them as plain data, so checkpoints load with torch's weights_only=True
        self.save_hyperparameters()
        self.save_hyperparameters(plain(dict(self.hparams)))
        model = self.hparams.model
        configs = [model, self.hparams.model_2 or model]
        self.networks = nn.ModuleDict(
            {name: build_network(configs[min(i, 1)]) for i, name in enumerate(self.network_names)}
        )
        evaluated = [*self.predict_fns(), *self.ensembles()]
        if self.selection_model not in evaluated:
            raise ValueError(
                f"{type(self).__name__}.selection_model={self.selection_model!r}: expected one "
                f"of the models it evaluates {evaluated}"
            )
        # speed options of the model config (model.channels_last: true/false/auto,
        # model.compile: false/true/a torch.compile mode); auto is resolved on the device
        self.channels_last_option = channels_last_option(model.get("channels_last", False))
        self.channels_last = self.channels_last_option is True
        self.compile_mode = compile_mode(model.get("compile", False))
        self._compiled: dict[str, Callable] = {}
        self.num_classes, self.class_names = num_classes, list(class_names)
        self.evaluator = VolumeEvaluator(num_classes, self.class_names, **self.hparams.evaluation)
        # on-device metrics (torchmetrics: counts stay on the device, summed across DDP ranks on
        # compute). Their states are not saved: checkpoints keep only tensors of the networks,
        # and checkpoints from before these metrics still load strictly.
        self.train_dice = nn.ModuleDict(
            {name: ForegroundDice(num_classes) for name in self.network_names}
        )
        self.train_agreement = Agreement()
        self.consensus_pairs = {f"{a}-{b}": (a, b) for a, b in combinations(self.network_names, 2)}
        self.error_consensus = nn.ModuleDict({k: ErrorConsensus() for k in self.consensus_pairs})
        self.evaluation_results: dict[str, dict] = {}
        # validations of this fit so far (sanity checks not counted): evaluation.distances_every
        self.validations_run = 0
        # name under which test metrics are logged ("test_on_val" when the data has no test split)
        self.evaluation_stage = "test"
        # the run's resolved config, stored in checkpoints so `segssl test` needs no overrides
        self.run_config: dict[str, Any] | None = None

    # -- what subclasses define --------------------------------------------------------------
    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict_fns(self) -> dict[str, PredictFn]:
        """The networks evaluated, by name, as functions from images to class probabilities."""
        return {name: softmax_of(partial(self.run_network, name)) for name in self.networks}

    def ensembles(self) -> dict[str, list[str]]:
        """Models evaluated as the mean probability of several networks."""
        return {}

    # -- training ----------------------------------------------------------------------------
    def run_network(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Forward one network, in channels-last layout and compiled when the config asks."""
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        network = self._compiled.get(name, self.networks[name])
        return network(x)

    def on_fit_start(self) -> None:
        self.channels_last = all(
            use_channels_last(self.channels_last_option, net, self.device.type)
            for net in self.networks.values()
        )
        if self.channels_last:
            for network in self.networks.values():
                network.to(memory_format=torch.channels_last)
        if self.compile_mode and not self._compiled:
            self._compiled = {
                name: torch.compile(net, mode=self.compile_mode)
                for name, net in self.networks.items()
            }

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.compile_mode == "reduce-overhead":
            # CUDA graphs: a new step may overwrite the buffers of the previous step's outputs
            torch.compiler.cudagraph_mark_step_begin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of the selection model."""
        fns = self.predict_fns()
        members = self.ensembles().get(self.selection_model, [self.selection_model])
        return ensemble_predict_fn(*(fns[m] for m in members))(x)

    def rotate_back_view_2(self, logits: torch.Tensor, *parts: Mapping | None) -> torch.Tensor:
        """Network 2's ``logits`` for the concatenated ``image_2`` of ``parts`` (labeled, then
        unlabeled) in the orientation of the labels and of network 1: each sample's ``rot_k_2``
        quarter turns undone. Without rotated views (no ``rot_k_2``) the logits as they are."""
        from segssl.filters.views import rotate_back

        ks = [part["rot_k_2"] for part in parts if part is not None and "rot_k_2" in part]
        if not ks:
            return logits
        k = torch.cat([torch.as_tensor(v, device=logits.device).reshape(-1) for v in ks])
        return rotate_back(logits, k)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if not self.rotates_view_2_back and any(
            "rot_k_2" in part for part in batch.values() if isinstance(part, Mapping)
        ):
            raise ValueError(
                f"filter.rotate_view_2=true rotates network 2's view, and {type(self).__name__} "
                "does not rotate its outputs back: its losses would compare rotated and unrotated "
                "voxels. Use method=dsaif / method=cps, or filter.rotate_view_2=false (set by "
                "dsaif_rotate_view_2, e.g. in +experiment=la)."
            )
        losses = self.training_losses(batch)
        size = batch["labeled"]["image_1"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=size)
        self._log_training_metrics()
        return losses["loss"]

    def track_labeled(self, name: str, logits: torch.Tensor, label: torch.Tensor) -> None:
        """Count network ``name``'s labeled-batch Dice (``logits`` (B, C, ...), ``label``
        (B, 1, ...)) towards ``train/dice_<name>``."""
        with torch.no_grad():
            self.train_dice[name].update(logits.detach().argmax(1), label[:, 0])

    def track_agreement(self, logits_a: torch.Tensor, logits_b: torch.Tensor) -> None:
        """Count where two networks' argmax agree on unlabeled pixels (``train/agreement``)."""
        with torch.no_grad():
            self.train_agreement.update(logits_a.detach().argmax(1), logits_b.detach().argmax(1))

    def _log_training_metrics(self) -> None:
        """Log Dice and agreement once per logging interval, pooled over the steps since the last
        log and summed across ranks: the steps in between read nothing back from the device."""
        every = max(int(self.trainer.log_every_n_steps), 1)
        if (self.global_step + 1) % every:
            return
        metrics = {f"train/dice_{name}": m for name, m in self.train_dice.items()}
        metrics["train/agreement"] = self.train_agreement
        for key, metric in metrics.items():
            if metric.update_count:  # the same on every rank: each runs the same steps
                self.log(key, metric.compute(), on_step=True, on_epoch=False)
                metric.reset()

    def configure_optimizers(self) -> dict:
        """One optimiser, one parameter group per network: the same update as SSL4MIS's one
        optimiser per network (the losses of the networks share no gradient), with Lightning's
        automatic optimisation, precision and accumulation."""
        groups = [{"params": net.parameters(), "name": n} for n, net in self.trainable().items()]
        optimizer = instantiate(self.hparams.optimizer, _partial_=True)(groups)
        total = max(int(self.trainer.max_steps), 1)
        power = self.hparams.poly_power
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: max(1.0 - step / total, 0.0) ** power
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "trained_networks" not in cls.__dict__:
            cls.trained_networks = cls.network_names
        unknown = set(cls.trained_networks) - set(cls.network_names)
        if unknown:
            raise TypeError(f"{cls.__name__}.trained_networks names no network: {sorted(unknown)}")

    def trainable(self) -> dict[str, nn.Module]:
        return {name: self.networks[name] for name in self.trained_networks}

    # -- evaluation --------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # the reference goes to the scoring device once per volume (Dice and error consensus
        # both count there); the image once, inside the evaluator's prediction
        where = self.evaluator.scoring_device(self.device)
        sample = {**batch, "label": self.evaluator.reference(batch["label"], where)}
        self.evaluator.add_case(
            self.predict_fns(),
            sample,
            self.device,
            self.ensembles(),
            observe=partial(self._track_error_consensus, sample),
        )

    test_step = validation_step

    def _track_error_consensus(self, sample: dict, labels: dict[str, torch.Tensor]) -> None:
        """Count the overlap of each network pair's errors on one volume, on the device."""
        if not self.consensus_pairs:
            return
        reference = torch.as_tensor(sample["label"]).to(self.device)  # already there in 2-D
        maps = {n: torch.as_tensor(m).to(self.device) for n, m in labels.items()}
        for key, (a, b) in self.consensus_pairs.items():
            if a in maps and b in maps:
                self.error_consensus[key].update(maps[a], maps[b], reference, str(sample["case"]))

    def on_validation_epoch_start(self) -> None:
        # HD95/ASD (host distance transforms) only at every evaluation.distances_every-th
        # validation of this fit; the others score Dice on the device (selection needs only it)
        if not self.trainer.sanity_checking:
            self.validations_run += 1
        self._start_evaluation(self.evaluator.distances_due(self.validations_run))

    def on_test_epoch_start(self) -> None:
        self._start_evaluation(distances=True)  # test metrics always include HD95 and ASD

    def _start_evaluation(self, distances: bool) -> None:
        self.evaluator.reset(distances=distances)
        for metric in self.error_consensus.values():
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation(self.evaluation_stage)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["segssl_config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.run_config = checkpoint.get("segssl_config")

    def _log_evaluation(self, stage: str) -> None:
        # the selection model travels with the summary into results.json (``save_evaluation``)
        summary = {**self.evaluator.summarize(), "selection_model": self.selection_model}
        self.evaluation_results[stage] = summary
        metrics = {}
        for model_name, result in summary["models"].items():
            for metric, value in result["mean"].items():
                metrics[f"{stage}/{model_name}/{metric}"] = value
            for cls, values in result["per_class"].items():
                metrics[f"{stage}/{model_name}/dice_{cls}"] = values["dice"]
        for key, metric in self.error_consensus.items():
            if metric.update_count:  # compute() sums the counts of all ranks
                metrics[f"{stage}/error_consensus/{key}"] = metric.compute()
        self.log_dict({k: float(v) for k, v in metrics.items()})
        if summary["models"]:
            selected = summary["models"][self.selection_model]["mean"]["dice"]
            self.log(f"{stage}/dice", float(selected), prog_bar=True)
