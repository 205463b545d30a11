"""What to compute: the LightningModule (task losses, co-annotation, distribution matching, weighting)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from distmtl.errors import DistmtlError
from distmtl.evaluation.gathered import GatheredOutputs
from distmtl.evaluation.metrics import PRIMARY_METRIC, task_metrics
from distmtl.losses import task_loss
from distmtl.losses.graph import EdgeConfig, RelatednessEdge, RelatednessGraph
from distmtl.models import MultiTaskNet
from distmtl.tasks import Task
from distmtl.evaluation.verification import DEFAULT_PAIRS, identity_verification
from distmtl.training.balance import term_scales
from distmtl.training.jacobian import objective_rows
from distmtl.weighting import create_weighting


def edge_config(options: Mapping[str, Any], key: str) -> EdgeConfig:
    spec = {k: options[k] for k in ("coannotation", "dm_a_to_b", "dm_b_to_a", "eps") if k in options}
    return EdgeConfig.from_dict(spec, key)


def loss_options(task: Task, options: Mapping[str, Any] | None) -> dict:
    """Per-task loss options from the config (class_weight given by class name is mapped to order)."""
    options = dict(options or {})
    if "class_weight" in options and isinstance(options["class_weight"], Mapping):
        weights = options["class_weight"]
        options["class_weight"] = [float(weights.get(c, 1.0)) for c in task.labels]
    for key in ("class_weight", "pos_weight"):
        if isinstance(options.get(key), list):
            options[key] = torch.tensor(options[key], dtype=torch.float32)
    return options


class MultiTaskModule(L.LightningModule):
    """Everything needed to rebuild the model lives in the (plain-data) hyperparameters.

    ``tasks``: ``{name: Task.to_dict()}``; ``edges``: ``[{task_a, task_b, classes, labels, matrix,
    prior, options}]``; ``config``: the resolved experiment config.
    """

    def __init__(self, config: dict, tasks: dict, edges: list | None = None, data_summary: dict | None = None,
                 *, download_pretrained: bool = True):
        """``download_pretrained=False`` builds the backbone without its pretrained weights (whatever
        ``model.pretrained`` says): for rebuilding from a checkpoint, whose state replaces them."""
        super().__init__()
        self.save_hyperparameters(ignore=["download_pretrained"])
        self.config = config
        self.tasks = {name: Task.from_dict(name, spec) for name, spec in tasks.items()}
        m = config["model"]
        self.net = MultiTaskNet(self.tasks, backbone=m["backbone"], in_chans=config["data"]["channels"],
                                pretrained=bool(m["pretrained"]) and download_pretrained, head=m["head"],
                                hidden=m["hidden"],
                                drop_rate=m["drop_rate"], backbone_kwargs=m.get("backbone_kwargs"),
                                weights=m.get("weights") if download_pretrained else None,
                                task_stages=int(m.get("task_stages") or 0))
        self.loss_options = {t: loss_options(task, config["losses"].get(t)) for t, task in self.tasks.items()}
        self.graph = RelatednessGraph([
            RelatednessEdge(e["task_a"], e["task_b"], torch.tensor(e["matrix"], dtype=torch.float32),
                            torch.tensor(e["prior"], dtype=torch.float32),
                            edge_config(e["options"], f"relatedness[{i}]"), key=f"relatedness[{i}]")
            for i, e in enumerate(edges or [])
        ])
        w = config["weighting"]
        options = dict(w.get("options") or {})
        if w["name"] == "dynamic":
            options.setdefault("feature_dim", self.net.shared_dim)
        if w["name"] == "jd":  # Jacobian descent: the aggregator replaces the weighted sum
            options.update(aggregator=w.get("aggregator"), coupling=w.get("coupling") or "task")
        self.weighting = create_weighting(w["name"], list(self.tasks), **options)
        # gradient aggregators take one gradient per objective: manual optimisation (training/jacobian.py)
        self.automatic_optimization = not getattr(self.weighting, "aggregates_gradients", False)
        self.nan_skipped = 0
        self._nonfinite = None
        # relatedness[i].balance: the scale of each coupling term (training/balance.py)
        self.term_scales = term_scales(edges or [], (data_summary or {}).get("sources") or [],
                                       config["data"]["sampling"])
        # one split's per-sample outputs at a time, gathered over processes once per sample
        self.eval_outputs = GatheredOutputs({t: 5 if task.kind == "identity" else 3
                                             for t, task in self.tasks.items()})
        self._eval_seen = 0
        self.last_eval_samples = 0
        self._device_augment = None

    # ----- training -----
    def forward(self, x):
        return self.net(x)

    def on_fit_start(self) -> None:
        """``model.channels_last`` and ``model.compile`` take effect on the training device.

        The compiled network is kept outside the module's children, so checkpoints and exported
        weights keep the plain parameter names."""
        m = self.config["model"]
        if m.get("channels_last"):
            self.net.to(memory_format=torch.channels_last)
        spec = m.get("compile")
        if spec:
            options = dict(spec) if isinstance(spec, Mapping) else {}
            try:
                object.__setattr__(self, "_compiled_net", torch.compile(self.net, **options))
            except TypeError as exc:
                raise DistmtlError(f"model.compile: {' '.join(str(exc).split())}") from None

    def run_net(self, images: torch.Tensor, *args):
        """The network as training runs it: channels-last input, compiled when asked for."""
        if self.config["model"].get("channels_last"):
            images = images.contiguous(memory_format=torch.channels_last)
        net = self.__dict__.get("_compiled_net")
        net = self.net if net is None else net
        return net(images, *args)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """A batch of the ``device`` augmentation path (uint8 images + per-sample numbers) becomes
        model input here, on the training device, in one batched step."""
        if isinstance(batch, dict) and "aug" in batch:
            from distmtl.data.augment import augment_batch

            if self._device_augment is None:  # read from the config once, not every batch
                from distmtl.training.experiment import augmentation_from_config, preprocessing_from_config

                self._device_augment = (augmentation_from_config(self.config),
                                        preprocessing_from_config(self.config))
            params = batch.pop("aug")
            batch["image"] = augment_batch(batch["image"], params, *self._device_augment)
        return batch

    def dm_scale(self) -> float:
        ramp = int(self.config["train"]["dm_ramp_steps"] or 0)
        return 1.0 if ramp <= 0 else min(1.0, self.global_step / ramp)

    def compute_losses(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The batch's total loss and what to log.

        Only the tasks with at least one label in the batch reach the weighting: a task absent
        from the batch contributes nothing and takes no part in the strategy's statistics (its
        masked loss would be a 0 that reads as a perfectly learnt task). When a loss or a
        coupling term is not finite (``train.on_nan: skip``), the weighting is not called at all,
        so strategies that train their own parameters never step on that batch.
        """
        self._nonfinite = None
        targets, masks = batch["targets"], batch["masks"]
        id_targets = {t: targets[t] for t, task in self.tasks.items() if task.kind == "identity"}
        outputs, features = self.run_net(batch["image"], id_targets)
        masks = self.label_budget(masks)
        every = {t: task_loss(task, outputs[t], targets[t], masks[t], **self.loss_options[t])
                 for t, task in self.tasks.items()}
        losses = {t: v for t, v in every.items() if bool(masks[t].any())}
        # an absent task's masked loss is a 0 still connected to its head: added as it is (outside
        # the weighting), it keeps every parameter in the graph, as data-parallel training expects
        absent_zeros = [v for t, v in every.items() if t not in losses]
        self._check_finite(losses, "task loss")
        terms = self.coupling_terms(outputs, features, targets, masks, id_targets)
        self._check_finite(terms, "coupling term")
        logged = {f"loss/{t}": v.detach() for t, v in losses.items()}
        logged.update({f"term/{k}": v.detach() for k, v in terms.items()})
        if self._nonfinite is not None:
            return torch.tensor(float("nan"), device=features.device), logged
        if self.coupling_in_tasks():
            losses = objective_rows(losses, terms, list(self.tasks), "task")
            terms = {}
        if losses:
            kwargs = {}
            if self.weighting.needs_features:
                kwargs["features"] = self.net.pooled(features)
            if self.weighting.needs_shared_parameters:
                kwargs["shared_parameters"] = self.net.last_shared_parameters()
            total = self.weighting(losses, **kwargs)
        else:  # no task labelled in this batch: only the coupling terms (if any) train
            total = torch.zeros((), device=features.device)
        for value in [*absent_zeros, *terms.values()]:
            total = total + value
        return total, logged

    def coupling_in_tasks(self) -> bool:
        """``weighting.coupling: task`` (loss weightings): each coupling term joins the loss of the
        task it supervises before the weighting, so a balancing strategy balances the tasks with
        their pseudo-labels and matched targets; ``after``: terms are added to the weighted total."""
        weighting = self.config["weighting"]
        return weighting["name"] != "jd" and weighting.get("coupling") == "task"

    def coupling_terms(self, outputs, features, targets, masks, id_targets) -> dict[str, torch.Tensor]:
        """The relatedness graph's terms. With ``train.shield_heads`` they are computed on outputs
        of detached heads: pseudo-labels and matched targets train the shared backbone, and each
        task's head learns from its own labels only."""
        if not len(self.graph.edges):
            return {}
        if self.config["train"].get("shield_heads"):
            outputs = self.net.apply_heads(features, id_targets, detach_heads=True)
        terms = self.graph(outputs, targets, masks, dm_scale=self.dm_scale())
        scale = self.coupling_scale()
        factors = {k: scale * self.term_scales.get(k, 1.0) for k in terms}
        return {k: v if factors[k] == 1.0 else factors[k] * v for k, v in terms.items()}

    def coupling_scale(self) -> float:
        """``train.coupling_schedule``: ``constant`` (1) or ``anneal``, every coupling term scaled by
        ``(1 + cos(pi * step / max_steps)) / 2``, so the last steps train on labels alone."""
        if self.config["train"].get("coupling_schedule", "constant") != "anneal":
            return 1.0
        progress = min(1.0, self.global_step / max(1, int(self.config["train"]["max_steps"])))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def label_budget(self, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``train.label_share``: keep task ``t``'s labels on ``round(share_t * batch)`` samples.

        The samples are the first labelled ones of one random order of the batch shared by all
        tasks, so the samples kept for a scarcer task are also kept for the others. The oracle
        variant uses it to get as many labels per task and step as a multi-task batch holds.
        """
        shares = self.config["train"].get("label_share") or {}
        if not shares:
            return dict(masks)
        masks = dict(masks)
        n = next(iter(masks.values())).shape[0]
        order = torch.randperm(n)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n)
        for t, share in shares.items():
            mask = masks[t]
            rows = mask.reshape(n, -1).any(dim=1).cpu()
            chosen = torch.where(rows, rank, rank + n).argsort()[:int(round(float(share) * n))]
            keep = torch.zeros(n, dtype=torch.bool)
            keep[chosen] = True
            keep = (keep & rows).to(mask.device)
            masks[t] = mask & keep.reshape((n,) + (1,) * (mask.dim() - 1))
        return masks

    def _check_finite(self, values: Mapping[str, torch.Tensor], what: str) -> None:
        for name, value in values.items():
            if not torch.isfinite(value).all():
                self._nonfinite = (what, name, float(value.detach().reshape(-1)[0]))
                if self.config["train"]["on_nan"] == "stop":
                    raise DistmtlError(f"non-finite {what} '{name}' = {self._nonfinite[2]} at step "
                                       f"{self.global_step} (set train.on_nan: skip to skip such batches)")

    def training_step(self, batch, batch_idx):
        if not self.automatic_optimization:
            from distmtl.training.jacobian import jacobian_step

            return jacobian_step(self, batch)
        total, logged = self.compute_losses(batch)
        if self._nonfinite is not None or not torch.isfinite(total):
            self.nan_skipped += 1
            self.log("train/nan_skipped", float(self.nan_skipped))
            return None
        if self._writes_logs():
            bs = batch["image"].shape[0]
            self.log("train/loss", total.detach(), prog_bar=True, batch_size=bs)
            self.log_dict(logged, batch_size=bs)
            self.log_dict({f"weight/{t}": float(v) for t, v in self.weighting.weights.items()}, batch_size=bs)
        return total

    def _writes_logs(self) -> bool:
        """Whether the logger writes this step's values. Lightning keeps only those (on_step,
        not on_epoch), but each ``self.log`` costs its bookkeeping either way: about 6% of a
        small model's step on CPU."""
        trainer = self._trainer
        return trainer is None or trainer._logger_connector.should_update_logs

    def on_train_epoch_end(self):
        self.weighting.on_train_epoch_end()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # random streams of the main process (augmentation without workers, dropout), so a resumed
        # run draws what the uninterrupted one would have drawn
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(),
                                    "numpy": _numpy_state(), "python": _python_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states:
            torch.set_rng_state(states["torch"])
            _set_numpy_state(states["numpy"])
            _set_python_state(states["python"])

    # ----- evaluation -----
    def store_outputs(self, batch) -> None:
        """Keep one evaluation batch's outputs, targets and masks for ``collected``; for an
        identity task also the embeddings (L2-normalised shared features, as ``net.embed``) and
        the identity groups of the batch (``batch["groups"]``). ``batch["index"]``, the samples'
        positions in the split (the DataModule's evaluation loaders give it), orders the rows
        gathered from several processes; without it the batches are taken to come in order."""
        outputs, features = self.run_net(batch["image"])
        embeddings = None
        parts = {}
        for t, task in self.tasks.items():
            kept = [outputs[t].detach().float(), batch["targets"][t], batch["masks"][t]]
            if task.kind == "identity":
                if embeddings is None:
                    embeddings = F.normalize(features.detach().float(), dim=1)
                groups = batch.get("groups", {}).get(t)
                if groups is None:  # a batch without groups: its training identities are the groups
                    groups = torch.where(kept[2], kept[1], -1)
                kept += [embeddings, groups]
            parts[t] = kept
        n = batch["image"].shape[0]
        index = batch.get("index")
        if index is None:
            index = torch.arange(self._eval_seen, self._eval_seen + n, device=batch["image"].device)
        self._eval_seen += n
        self.eval_outputs.update(index, parts)

    def collected(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """Per task ``(outputs, targets, masks)``, plus ``(embeddings, groups)`` for an identity
        task, on the CPU: every sample of the split once, in the split's order, from every process."""
        if self.eval_outputs.update_count == 0:
            return {}
        parts, index = self.eval_outputs.compute()
        self.eval_outputs.reset()
        self._eval_seen = 0
        self.last_eval_samples = int(index.numel())
        return {t: tuple(x.cpu() for x in tensors) for t, tensors in parts.items()}

    def validation_step(self, batch, batch_idx):
        self.store_outputs(batch)

    def test_step(self, batch, batch_idx):
        self.store_outputs(batch)

    def _log_eval(self, prefix: str):
        collected = self.collected()  # the same on every process
        metrics = metrics_from_outputs(self.tasks, collected)
        scores = []
        for t, m in metrics.items():
            primary = m.get(PRIMARY_METRIC[self.tasks[t].kind])
            if primary is not None and not math.isnan(primary):
                self.log(f"{prefix}/{t}/{PRIMARY_METRIC[self.tasks[t].kind]}", float(primary), sync_dist=False)
                scores.append(float(primary))
        self.log(f"{prefix}/score", sum(scores) / len(scores) if scores else 0.0, prog_bar=True)
        self.last_metrics = metrics
        self.last_outputs = collected

    def on_validation_epoch_end(self):
        self._log_eval("val")

    def on_test_epoch_end(self):
        self._log_eval("test")

    # ----- optimisation -----
    def configure_optimizers(self):
        o = self.config["optim"]
        private = set()
        if self.weighting.owns_optimizer:
            private = {id(p) for p in self.weighting.parameters()}
        params = [p for p in self.parameters() if id(p) not in private and p.requires_grad]
        # foreach: one kernel per operation over all parameters (PyTorch's choice on CUDA, not on
        # CPU, where the per-tensor loop cost 5% of a small model's step); the same numbers
        if o["name"] == "adamw":
            opt = torch.optim.AdamW(params, lr=o["lr"], weight_decay=o["weight_decay"], foreach=True)
        elif o["name"] == "sgd":
            opt = torch.optim.SGD(params, lr=o["lr"], momentum=0.9, weight_decay=o["weight_decay"], foreach=True)
        else:
            raise DistmtlError(f"optim.name: unknown optimiser '{o['name']}' (adamw or sgd)")
        total = max(1, int(self.config["train"]["max_steps"]))
        warmup = int(o["warmup_steps"] or 0)
        if o["schedule"] == "constant":
            return opt

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress))

        if o["schedule"] != "cosine":
            raise DistmtlError(f"optim.schedule: unknown schedule '{o['schedule']}' (cosine or constant)")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _numpy_state() -> dict:
    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached": float(cached), "name": name}


def _set_numpy_state(state: dict) -> None:
    import numpy as np

    np.random.set_state((state["name"], state["keys"].numpy().astype("uint32"), state["pos"],
                         state["has_gauss"], state["cached"]))


def _python_state() -> dict:
    import random

    version, internal, gauss = random.getstate()
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _set_python_state(state: dict) -> None:
    import random

    random.setstate((state["version"], tuple(state["internal"]), state["gauss"]))


def metrics_from_outputs(tasks: Mapping[str, Task], collected: Mapping[str, tuple], *,
                         n_pairs: int = DEFAULT_PAIRS, pairs_seed: int = 0) -> dict[str, dict]:
    """Metrics per task of :meth:`MultiTaskModule.collected`'s outputs; an identity task with
    identity groups also gets verification metrics on ``n_pairs`` pairs drawn from them."""
    metrics = {}
    for t, (outputs, targets, masks, *identity) in collected.items():
        grouped = bool(identity) and bool((identity[1] >= 0).any())
        if not (masks.any() or grouped):
            continue
        metrics[t] = task_metrics(tasks[t], outputs, targets, masks)
        if grouped:
            try:
                summary, _ = identity_verification(identity[0], identity[1], n_pairs=n_pairs, seed=pairs_seed)
            except DistmtlError as exc:
                raise DistmtlError(f"task '{t}': {exc}") from None
            metrics[t].update(summary)
    return metrics
