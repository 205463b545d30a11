"""From a resolved config to tasks, encoded sources and relatedness edges, checked up front."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distmtl.data.csvformat import EncodedSource, cache_images, encode, identity_values, read_csv_source
from distmtl.data.loaders.base import LoadedSource
from distmtl.data.splits import carve, is_carved
from distmtl.data.transforms import Augmentation, Preprocessing
from distmtl.errors import DistmtlError, close_matches
from distmtl.tasks import Task, labels_from_data

log = logging.getLogger(__name__)

PENDING = "<identities from the training data>"


@dataclass
class Edge:
    task_a: str
    task_b: str
    relatedness: Any  # distmtl.relatedness.Relatedness, aligned to the tasks' orders
    options: dict


@dataclass
class Experiment:
    config: dict
    tasks: dict[str, Task]
    train_sources: list[EncodedSource]
    eval_sources: dict[str, EncodedSource] = field(default_factory=dict)
    oracle: EncodedSource | None = None
    edges: list[Edge] = field(default_factory=list)

    @property
    def preprocessing(self) -> Preprocessing:
        return preprocessing_from_config(self.config)

    def data_summary(self) -> dict:
        """The training sources, their sizes and annotation counts (kept with the model)."""
        return {"sources": [{"name": s.name, "size": len(s), "annotated": s.label_counts()}
                            for s in self.train_sources]}

    @property
    def augmentation(self) -> Augmentation:
        return augmentation_from_config(self.config)


def augmentation_from_config(config: dict) -> Augmentation:
    aug = config["data"]["augment"]
    return Augmentation(flip=aug["flip"], crop_scale=tuple(aug["crop_scale"]),
                        rotation=aug["rotation"], color_jitter=aug["color_jitter"])


def augment_on(config: dict) -> str:
    """Where training augmentation runs: ``device`` (batched, after the batch reaches the
    accelerator) or ``workers`` (fused, per image); ``auto`` follows the accelerator."""
    choice = config["data"].get("augment_on") or "auto"
    if choice != "auto":
        return choice
    accelerator = str(config["trainer"]["accelerator"]).lower()
    if accelerator == "cpu":
        return "workers"
    import torch

    return "device" if torch.cuda.is_available() else "workers"


def preprocessing_from_config(config: dict) -> Preprocessing:
    data = config["data"]
    return Preprocessing(size=data["image_size"], channels=data["channels"],
                         mean=tuple(data["mean"]), std=tuple(data["std"]),
                         interpolation=data.get("interpolation") or "bilinear")


def build_tasks(config: dict, training: list[LoadedSource] | None = None) -> dict[str, Task]:
    """The config's tasks. An identity task without labels (or with ``labels: from_data``) takes
    the sorted distinct identities of the ``training`` sources (as read, before encoding); without
    them it holds a placeholder class, enough to read the sources with."""
    tasks = {}
    for name, spec in config["tasks"].items():
        if not isinstance(spec, dict):
            raise DistmtlError(f"tasks.{name}: expected a mapping with kind and labels")
        if labels_from_data(spec):
            labels = [PENDING] if training is None else identities_in(name, training)
            spec = {**spec, "labels": labels}
        tasks[name] = Task.from_dict(name, spec)
    return tasks


def identities_in(task: str, training: list[LoadedSource]) -> list[str]:
    found: set[str] = set()
    for loaded in training:
        if task in loaded.frame.columns:
            found.update(v for v in identity_values(loaded.frame[task]) if v is not None)
    if not found:
        raise DistmtlError(f"tasks.{task}.labels: taken from the data (from_data), but no training source "
                           f"has an identity in a '{task}' column (sources: "
                           f"{', '.join(loaded.name for loaded in training)})")
    return sorted(found)


def source_label(spec: Any) -> str:
    if isinstance(spec, str):
        return Path(spec).stem
    if spec.get("name"):
        return spec["name"]
    if is_carved(spec):
        return f"{spec['from']}_val"
    if "shards" in spec:
        return Path(spec["shards"]).name
    return Path(spec["csv"]).stem if "csv" in spec else spec["loader"]


def load_source(spec: Any, tasks: dict[str, Task], config: dict, where: str) -> EncodedSource:
    """Read one source (generic CSV or named loader) and encode it for ``tasks``."""
    if is_carved(spec):  # the validation part of a training source, split again the same way
        index, origin = carved_origin(config, spec, where)
        _, val = carve(read_source(origin, tasks, config, f"data.sources[{index}]"), spec, where)
        return encode_source(val, tasks, config, where, from_csv=_is_csv(origin))
    return encode_source(read_source(spec, tasks, config, where), tasks, config, where, from_csv=_is_csv(spec))


def carved_origin(config: dict, spec: dict, where: str) -> tuple[int, Any]:
    """The training source ``{from: name}`` names, with its index in ``data.sources``."""
    names = [source_label(s) for s in config["data"]["sources"]]
    if spec["from"] not in names:
        raise DistmtlError(f"{where}.from: unknown training source {spec['from']!r}"
                           f"{close_matches(spec['from'], names)} (training sources: {', '.join(names)})")
    index = names.index(spec["from"])
    return index, config["data"]["sources"][index]


def _is_csv(spec: Any) -> bool:
    return isinstance(spec, str) or "csv" in spec


def read_source(spec: Any, tasks: dict[str, Task], config: dict, where: str) -> LoadedSource:
    """Read one source (generic CSV or named loader) into its canonical frame."""
    if isinstance(spec, str):
        spec = {"csv": spec}
    skip = spec.get("skip_bad_rows", config["data"]["skip_bad_rows"])
    check = spec.get("check_images", config["data"].get("check_images", True))
    name = source_label(spec)
    if "shards" in spec:  # packed: rows were validated when packed, the index lists every image
        from distmtl.data.shards import read_shards

        loaded = read_shards(spec["shards"], name=name, where=f"{where}.shards")
        if spec.get("rename"):
            loaded.frame = loaded.frame.rename(columns=dict(spec["rename"]))
    elif "csv" in spec:
        loaded = read_csv_source(spec["csv"], tasks, name=name, rename=spec.get("rename"),
                                 skip_bad_rows=skip, check_images=check)
    else:
        from distmtl.data.loaders import get_loader

        module = get_loader(spec["loader"])
        if not spec.get("root") and getattr(module, "NEEDS_ROOT", True):  # bundled data needs none
            raise DistmtlError(f"{where}.root: the dataset folder is required for loader '{spec['loader']}'")
        options = dict(spec.get("options") or {})
        loaded = module.load(spec.get("root"), split=spec.get("split", "train"), **options)
        loaded.name = name
        if spec.get("rename"):
            loaded.frame = loaded.frame.rename(columns=dict(spec["rename"]))
    return loaded


def encode_source(loaded: LoadedSource, tasks: dict[str, Task], config: dict, where: str, *,
                  from_csv: bool) -> EncodedSource:
    encoded = encode(loaded, tasks)
    if config["data"]["cache_images"]:
        encoded = cache_images(encoded, config["data"]["image_size"], config["data"]["channels"],
                               interpolation=config["data"].get("interpolation") or "bilinear")
    if not encoded.annotated_tasks and not any((g >= 0).any() for g in encoded.groups.values()):
        raise DistmtlError(f"{where} ('{loaded.name}'): annotates none of the configured tasks "
                           f"({', '.join(tasks)})")
    if not from_csv:  # the CSV reader logs its own notes (skipped rows) as it reads
        for note in encoded.notes:
            log.warning(note)
    return encoded


EVAL_SPLITS = ("val", "test", "oracle")


def source_names(config: dict) -> dict[str, str]:
    """``{config key: source name}`` of every source: training sources, then val, test, oracle.

    A name must be unique: a duplicate is one error naming both keys (two loaders of the same
    dataset are both named after the loader unless given a ``name``). The one exception is the
    same evaluation file given for two evaluation roles (``val`` and ``test``)."""
    data = config["data"]
    specs = [(f"data.sources[{i}]", s) for i, s in enumerate(data["sources"])]
    specs += [(f"data.{split}", data[split]) for split in EVAL_SPLITS if data.get(split) is not None]
    names: dict[str, str] = {}
    given: dict[str, object] = {}
    for where, spec in specs:
        name = source_label(spec)
        first = next((w for w, n in names.items() if n == name), None)
        # one split file used for two evaluation roles (val and test) is one source, not a clash
        same_eval_file = (first is not None and where.split(".")[1] in EVAL_SPLITS
                          and first.split(".")[1] in EVAL_SPLITS and given[first] == spec)
        given[where] = spec
        if first is not None and not same_eval_file:
            raise DistmtlError(f"{where}: source name '{name}' is also the name of {first}; give each "
                               f"source its own 'name'")
        names[where] = name
    return names


def check_estimate_sources(config: dict, names: dict[str, str]) -> None:
    """``table: {estimate: name}`` must name a training source: checked before any data loads."""
    training = [n for w, n in names.items() if w.startswith("data.sources")]
    others = {n: w for w, n in names.items() if not w.startswith("data.sources")}
    for i, spec in enumerate(config["relatedness"]):
        table = spec.get("table")
        if not (isinstance(table, dict) and "estimate" in table and "loader" not in table):
            continue
        name = table["estimate"]
        where = f"relatedness[{i}].table.estimate"
        if name in others:
            raise DistmtlError(f"{where}: '{name}' is {others[name]}, not a training source; a table is "
                               f"estimated from training sources only ({', '.join(training)})")
        if name not in training:
            raise DistmtlError(f"{where}: unknown training source {name!r}"
                               f"{close_matches(str(name), training)} (training sources: {', '.join(training)})")


def build_experiment(config: dict, *, tasks: dict[str, Task] | None = None,
                     with_eval: bool = True, with_oracle: bool = False) -> Experiment:
    check_model_and_weighting(config)
    names = source_names(config)
    check_estimate_sources(config, names)
    data = config["data"]
    wheres = [f"data.sources[{i}]" for i in range(len(data["sources"]))]
    # the training sources are read once: identity classes from the data come from them
    reading = tasks if tasks is not None else build_tasks(config)
    loaded = [read_source(s, reading, config, w) for s, w in zip(data["sources"], wheres)]
    carved_val = None
    if is_carved(data["val"]):
        index, _ = carved_origin(config, data["val"], "data.val")
        loaded[index], carved_val = carve(loaded[index], data["val"], "data.val")
        log.info(carved_val.notes[-1])
    if tasks is None:
        tasks = build_tasks(config, loaded)
    train = [encode_source(x, tasks, config, w, from_csv=_is_csv(s))
             for x, s, w in zip(loaded, data["sources"], wheres)]
    annotated = {t for s in train for t in s.annotated_tasks}
    for name in tasks:
        if name not in annotated:
            raise DistmtlError(f"tasks.{name}: no training source annotates this task "
                               f"(sources: {', '.join(s.name for s in train)})")
    eval_sources = {}
    if with_eval:
        for split in ("val", "test"):
            if split == "val" and carved_val is not None:
                index, origin = carved_origin(config, data["val"], "data.val")
                eval_sources["val"] = encode_source(carved_val, tasks, config, "data.val", from_csv=_is_csv(origin))
            elif data[split] is not None:
                eval_sources[split] = load_source(data[split], tasks, config, f"data.{split}")
    oracle = None
    if with_oracle and data["oracle"] is not None:
        oracle = load_source(data["oracle"], tasks, config, "data.oracle")
    check_verification_pairs(eval_sources)
    # estimated tables come from training sources only: an evaluation split must not leak into training
    eval_names = {n: w for w, n in names.items() if not w.startswith("data.sources")}
    edges = build_edges(config, tasks, train, eval_names)
    return Experiment(config, tasks, train, eval_sources, oracle, edges)


def check_verification_pairs(eval_sources: dict[str, EncodedSource]) -> None:
    """An evaluation split with identities must allow verification pairs: fail before training."""
    from distmtl.evaluation.verification import verification_pairs

    for split, source in eval_sources.items():
        for task, groups in source.groups.items():
            if (groups >= 0).any():
                try:
                    verification_pairs(groups)
                except DistmtlError as exc:
                    raise DistmtlError(f"data.{split} ('{source.name}'), task '{task}': {exc}") from None


def check_model_and_weighting(config: dict) -> None:
    """Names that would otherwise fail only when the network is built: checked before any data loads."""
    from distmtl.models import check_backbone
    from distmtl.weighting import WEIGHTINGS

    if config.get("model"):
        check_backbone(config["model"]["backbone"])
        weights = config["model"].get("weights")
        if weights is not None:
            from distmtl.models import read_weights_file

            read_weights_file(weights)  # exists and holds plain tensors; matched to the backbone when built
    if config.get("weighting"):
        name = config["weighting"]["name"]
        if str(name).strip().lower() not in WEIGHTINGS:
            known = sorted(WEIGHTINGS)
            raise DistmtlError(f"weighting.name: unknown weighting '{name}'"
                               f"{close_matches(str(name).strip().lower(), known)}; known: {', '.join(known)}")
        w = config["weighting"]
        if str(name).strip().lower() == "jd":
            from distmtl.weighting.jd import check_jd_spec

            check_jd_spec(w.get("aggregator"), w.get("coupling") or "task", w.get("options") or {})
        else:
            if w.get("aggregator") is not None:
                raise DistmtlError(f"weighting.aggregator: only with weighting.name: jd (got name '{name}')")
            if w.get("coupling") == "rows":
                raise DistmtlError(f"weighting.coupling: 'rows' needs name: jd (got name '{name}'); "
                                   "a loss weighting takes task or after")


def build_edges(config: dict, tasks: dict[str, Task], sources: list[EncodedSource],
                eval_names: dict[str, str] | None = None) -> list[Edge]:
    """The relatedness edges; ``{estimate: name}`` reads the training ``sources`` only
    (``eval_names``, ``{name: config key}`` of the evaluation splits, makes naming one an error)."""
    from distmtl.relatedness.table import Relatedness

    edges = []
    for i, spec in enumerate(config["relatedness"]):
        where = f"relatedness[{i}]"
        pair = spec["tasks"]
        if not isinstance(pair, list) or len(pair) != 2:
            raise DistmtlError(f"{where}.tasks: expected [multiclass_or_identity_task, multilabel_task], "
                               f"got {pair!r}")
        for name in pair:
            if name not in tasks:
                raise DistmtlError(f"{where}.tasks: unknown task '{name}'{close_matches(name, tasks)}")
        a, b = tasks[pair[0]], tasks[pair[1]]
        if a.kind not in ("multiclass", "identity") or b.kind != "multilabel":
            raise DistmtlError(f"{where}.tasks: expected a multiclass (or identity) then a multilabel task, "
                               f"got '{a.name}' ({a.kind}) and '{b.name}' ({b.kind})")
        table = spec["table"]
        if table is None:
            raise DistmtlError(f"{where}.table: missing (a built-in name, a CSV path, "
                               f"{{estimate: source}} or {{loader: name, root: folder}})")
        if a.kind == "identity" and not _per_identity_table(table):
            # built-in and dataset tables are over expression or species classes, never people
            raise DistmtlError(f"{where}.table: '{a.name}' is an identity task: expected "
                               f"{{estimate: <source name>}} or a CSV whose classes are its identities, "
                               f"got {table!r}")
        if isinstance(table, dict) and "loader" in table:
            # The table a dataset ships (CUB-200's class-attribute matrix, Fashion-MNIST's
            # class-attribute table): the loader module's relatedness(root, **options).
            from distmtl.data.loaders import get_loader

            unknown = sorted(set(table) - {"loader", "root", "options"})
            if unknown:
                raise DistmtlError(f"{where}.table.{unknown[0]}: unknown key"
                                   f"{close_matches(unknown[0], ['loader', 'root', 'options'])}")
            module = get_loader(table["loader"])
            if not hasattr(module, "relatedness"):
                raise DistmtlError(f"{where}.table.loader: loader '{table['loader']}' provides no "
                                   f"relatedness table")
            root = table.get("root")
            if root is None:
                import inspect

                param = inspect.signature(module.relatedness).parameters.get("root")
                if param is None or param.default is inspect.Parameter.empty:
                    raise DistmtlError(f"{where}.table.root: the dataset folder is required for "
                                       f"loader '{table['loader']}'")
            options = table.get("options") or {}
            if not isinstance(options, dict):
                raise DistmtlError(f"{where}.table.options: expected a mapping, got {options!r}")
            try:
                rel = module.relatedness(root, **options)
            except TypeError as exc:
                if not options:
                    raise
                raise DistmtlError(f"{where}.table.options: loader '{table['loader']}' rejects "
                                   f"them ({exc})") from None
        elif isinstance(table, dict):
            if "estimate" not in table:
                raise DistmtlError(f"{where}.table: expected {{estimate: <source name>}} or "
                                   f"{{loader: <name>, root: <folder>}}, got {table!r}")
            rel = estimate_from_source(table["estimate"], a, b, sources, where,
                                       alpha=float(table.get("alpha", 1.0)), eval_names=eval_names)
        else:
            try:
                rel = Relatedness.load(table)
            except DistmtlError as exc:
                raise DistmtlError(f"{where}.table: {exc}") from None
        try:
            rel = rel.aligned(a.labels, b.labels, task_a=a.name, task_b=b.name)
        except DistmtlError as exc:
            raise DistmtlError(f"{where}.table: {exc}") from None
        edges.append(Edge(a.name, b.name, rel, spec))
    return edges


def _per_identity_table(table: Any) -> bool:
    if isinstance(table, dict):
        return "estimate" in table and "loader" not in table
    text = str(table)
    return Path(text).is_file() or text.lower().endswith(".csv")


def estimate_from_source(name: str, a: Task, b: Task, sources: list[EncodedSource], where: str,
                         alpha: float = 1.0, eval_names: dict[str, str] | None = None):
    from distmtl.relatedness.table import Relatedness

    by_name = {s.name: s for s in sources}
    if name in (eval_names or {}) and name not in by_name:
        raise DistmtlError(f"{where}.table.estimate: '{name}' is {eval_names[name]}, not a training "
                           f"source; a table is estimated from training sources only "
                           f"({', '.join(by_name)})")
    if name not in by_name:
        raise DistmtlError(f"{where}.table.estimate: unknown training source '{name}'"
                           f"{close_matches(name, by_name)} (training sources: {', '.join(by_name)})")
    src = by_name[name]
    has_class = src.masks[a.name]
    # multiclass targets are class-probability rows, identity targets class indices
    classes = src.targets[a.name] if a.kind == "identity" else src.targets[a.name].argmax(axis=1)
    class_index = np.where(has_class, classes, -1)
    both = has_class & src.masks[b.name].any(axis=1)
    if not both.any():
        raise DistmtlError(f"{where}.table.estimate: source '{name}' has no sample annotated for both "
                           f"'{a.name}' and '{b.name}'")
    return Relatedness.estimate(class_index, src.targets[b.name], src.masks[b.name],
                                a.labels, b.labels, alpha=alpha)
