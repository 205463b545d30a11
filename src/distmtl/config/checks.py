"""Values no run can use (batch_size: 0, lr: -0.01, on_nan: stpo), refused when a config is
resolved, so --dry-run and every command that reads a config refuse them too. The types are
checked while merging with the defaults (loading.py); these are the checks of what the types let
through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distmtl.errors import DistmtlError, close_matches

POSITIVE_INTS = ("data.image_size", "data.batch_size", "data.eval_batch_size", "train.max_steps",
                 "train.val_every_steps", "train.checkpoint_every_steps", "trainer.num_nodes",
                 "trainer.accumulate_grad_batches", "trainer.log_every_n_steps", "train.patience_steps")
NON_NEGATIVE = ("data.num_workers", "train.dm_ramp_steps", "optim.warmup_steps", "optim.weight_decay",
                "train.early_stopping_patience", "data.augment.rotation", "data.augment.color_jitter",
                "train.min_delta", "train.min_steps")
NON_NEGATIVE_INTS = ("model.task_stages",)
CHOICES = {"train.on_nan": ("stop", "skip"), "train.mode": ("max", "min"), "train.until": ("steps", "plateau"),
           "optim.name": ("adamw", "sgd"), "optim.schedule": ("cosine", "constant"),
           "model.head": ("linear", "mlp"), "compare.single_task_batch": ("matched", "full"),
           "data.channels": (1, 3), "weighting.coupling": ("task", "rows", "after"),
           "train.coupling_schedule": ("constant", "anneal")}
SAMPLING_MODES = ("equal", "proportional", "sqrt")


def _at(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _is_number(value: Any) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_values(config: Mapping[str, Any]) -> None:
    """One line naming the key and value for every value outside what the run accepts."""
    for key in POSITIVE_INTS:
        value = _at(config, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise DistmtlError(f"{key}: expected a positive integer, got {value!r}")
    for key in NON_NEGATIVE_INTS:
        value = _at(config, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise DistmtlError(f"{key}: expected an integer >= 0, got {value!r}")
    for key in NON_NEGATIVE:
        value = _at(config, key)
        if value is not None and (not _is_number(value) or value < 0):
            raise DistmtlError(f"{key}: expected a number >= 0, got {value!r}")
    for key, allowed in CHOICES.items():
        value = _at(config, key)
        if value is not None and value not in allowed:
            raise DistmtlError(f"{key}: expected one of {', '.join(map(str, allowed))}, got {value!r}"
                               f"{close_matches(str(value), map(str, allowed))}")
    lr = _at(config, "optim.lr")
    if not _is_number(lr) or lr <= 0:
        raise DistmtlError(f"optim.lr: expected a number > 0, got {lr!r}")
    devices = _at(config, "trainer.devices")
    if isinstance(devices, int) and not isinstance(devices, bool) and (devices == 0 or devices < -1):
        raise DistmtlError(f"trainer.devices: expected a positive number of devices (or -1 for all), "
                           f"got {devices!r}")
    from distmtl.config.environment import logger_specs

    logger_specs(config["train"]["loggers"])
    compile_spec = config["model"]["compile"]
    if compile_spec is not None and not isinstance(compile_spec, (bool, dict)):
        raise DistmtlError(f"model.compile: expected true, false or a mapping of torch.compile arguments "
                           f"(mode, backend, fullgraph, dynamic), got {compile_spec!r}")
    if not isinstance(config["train"]["deterministic"], (bool, type(None))):
        raise DistmtlError(f"train.deterministic: expected true or false, got {config['train']['deterministic']!r}")
    _check_sampling(config)
    _check_losses(config)
    _check_edges(config)
    _check_label_share(config)


def _check_label_share(config: Mapping[str, Any]) -> None:
    tasks = config["tasks"]
    for name, share in (config["train"]["label_share"] or {}).items():
        where = f"train.label_share.{name}"
        if name not in tasks:
            raise DistmtlError(f"{where}: unknown task '{name}'{close_matches(str(name), tasks)}; "
                               f"tasks: {', '.join(map(str, tasks))}")
        if not _is_number(share) or not 0 < share <= 1:
            raise DistmtlError(f"{where}: expected a share of the batch in (0, 1], got {share!r}")


def _check_sampling(config: Mapping[str, Any]) -> None:
    sampling, n = config["data"]["sampling"], len(config["data"]["sources"])
    if sampling is None or sampling in SAMPLING_MODES:
        return
    if isinstance(sampling, list):
        if len(sampling) != n:
            raise DistmtlError(f"data.sampling: {len(sampling)} weights for {n} sources "
                               f"(one weight per entry of data.sources)")
        if not all(_is_number(w) and w >= 0 for w in sampling) or not sum(sampling) > 0:
            raise DistmtlError(f"data.sampling: weights must be numbers >= 0, not all 0, got {sampling!r}")
        return
    raise DistmtlError(f"data.sampling: expected one of {', '.join(SAMPLING_MODES)} or a list of "
                       f"weights (one per source), got {sampling!r}{close_matches(str(sampling), SAMPLING_MODES)}")


def _check_losses(config: Mapping[str, Any]) -> None:
    from distmtl.losses.task_losses import TASK_LOSS_OPTIONS

    tasks = config["tasks"]
    for name, options in (config["losses"] or {}).items():
        where = f"losses.{name}"
        if name not in tasks:
            raise DistmtlError(f"{where}: unknown task '{name}'{close_matches(str(name), tasks)}; "
                               f"tasks: {', '.join(map(str, tasks))}")
        if options is None:
            continue
        if not isinstance(options, Mapping):
            raise DistmtlError(f"{where}: expected a mapping of loss options, got {options!r}")
        spec = tasks[name]
        kind = spec.get("kind") if isinstance(spec, Mapping) else None
        allowed = TASK_LOSS_OPTIONS.get(kind)
        if allowed is None:
            continue  # the task itself is refused, with its own message, when it is built
        for key in options:
            if key not in allowed:
                raise DistmtlError(f"{where}.{key}: unknown loss option for a {kind} task"
                                   f"{close_matches(str(key), allowed)}; expected one of {', '.join(allowed)}")
        smoothing = options.get("label_smoothing")
        if smoothing is not None and (not _is_number(smoothing) or not 0 <= smoothing < 1):
            raise DistmtlError(f"{where}.label_smoothing: expected a number in [0, 1), got {smoothing!r}")


def _check_edges(config: Mapping[str, Any]) -> None:
    from distmtl.losses.graph import EdgeConfig

    for i, edge in enumerate(config["relatedness"]):
        spec = {k: edge[k] for k in ("coannotation", "dm_a_to_b", "dm_b_to_a", "eps")}
        EdgeConfig.from_dict(spec, f"relatedness[{i}]")
