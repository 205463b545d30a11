"""The network: a shared timm backbone, pooled features, one head per task."""

from __future__ import annotations

import copy
import functools

from collections.abc import Mapping
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from distmtl.errors import DistmtlError, close_matches
from distmtl.tasks import Task


SHORTCUT_NAMES = frozenset({"downsample", "shortcut", "skip"})  # residual side branches in timm
HUB_PREFIXES = ("hf-hub:", "local-dir:")  # timm resolves these itself (a Hub repo, a local folder)


def check_backbone(name: str) -> None:
    """A one-line error naming ``model.backbone`` and the closest timm names, unless timm knows ``name``.

    ``hf-hub:org/name`` and ``local-dir:PATH`` are timm's own prefixes for a model whose config and
    weights live in a Hugging Face Hub repo or a folder; timm checks them when the model is built."""
    if isinstance(name, str) and name.startswith(HUB_PREFIXES) and len(name.split(":", 1)[1]) > 0:
        return
    if not isinstance(name, str) or not timm.is_model(name):
        raise DistmtlError(f"model.backbone: unknown timm model '{name}'"
                           f"{close_matches(str(name), timm.list_models(), n=5)}"
                           f" (a Hub model is named hf-hub:org/name)")


def _hub_error(name: str, exc: BaseException) -> DistmtlError:
    """One line for a backbone that cannot be fetched, saying when offline mode is the reason."""
    from huggingface_hub import constants

    text = " ".join(str(exc).split())[:300]
    if constants.is_offline_mode() and name.startswith("hf-hub:"):
        return DistmtlError(f"model.backbone: cannot load '{name}': not in the local Hugging Face cache "
                            f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set")
    return DistmtlError(f"model.backbone: cannot load '{name}': {type(exc).__name__}: {text}")


def backbone_pretrained_cfg(name: str) -> dict:
    """The backbone's pretrained config (input size, mean, std, interpolation, ...) as a dict.

    From timm's registry for a plain name (``resnet18.a1_in1k``), from the repo's ``config.json``
    for ``hf-hub:`` (the local Hugging Face cache when offline), from ``PATH/config.json`` for
    ``local-dir:PATH``. Empty when timm has none."""
    check_backbone(name)
    if name.startswith(HUB_PREFIXES):
        return dict(_hub_model_config(name)[0])
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    return cfg.to_dict() if cfg is not None else {}


def _hub_model_config(name: str) -> tuple:
    """timm's ``(pretrained_cfg, architecture, model_args)`` of an ``hf-hub:`` / ``local-dir:`` name."""
    from timm.models._hub import load_model_config_from_hf, load_model_config_from_path

    try:
        if name.startswith("hf-hub:"):
            return load_model_config_from_hf(name[len("hf-hub:"):])
        return load_model_config_from_path(name[len("local-dir:"):])
    except Exception as exc:  # noqa: BLE001 - network, cache and file errors alike
        raise _hub_error(name, exc) from None


def hub_architecture(name: str) -> dict | None:
    """``{"name", "args"}``: the timm architecture and constructor arguments an ``hf-hub:`` /
    ``local-dir:`` backbone stands for (from its ``config.json``), so that an exported model can be
    rebuilt without the Hub. None for a plain timm name."""
    if not name.startswith(HUB_PREFIXES):
        return None
    _, arch, args = _hub_model_config(name)
    args = {k: v for k, v in dict(args or {}).items() if k not in ("num_classes", "in_chans", "pretrained_cfg")}
    return {"name": arch, "args": args}


def backbone_data_config(name: str) -> dict:
    """``{image_size, mean, std, interpolation}`` the backbone's pretrained weights expect
    (:func:`timm.data.resolve_data_config` of its pretrained config); empty when it has none."""
    cfg = backbone_pretrained_cfg(name)
    if not cfg:
        return {}
    data = timm.data.resolve_data_config(pretrained_cfg=cfg)
    _, height, width = data["input_size"]
    return {"image_size": int(max(height, width)), "mean": [float(v) for v in data["mean"]],
            "std": [float(v) for v in data["std"]], "interpolation": str(data["interpolation"])}


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a torch file read with ``weights_only=True``.

    Checkpoint wrappers (``state_dict``, ``model``, EMA) and a ``module.`` prefix are undone by
    timm's own :func:`timm.models.load_state_dict`; nothing is unpickled beyond plain tensors."""
    path = Path(path)
    if not path.is_file():
        raise DistmtlError(f"model.weights: {path}: file not found")
    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable, not weights, or needs unpickling
        text = " ".join(str(exc).split())[:200]
        raise DistmtlError(f"model.weights: {path}: not a safetensors file or a plain state dict "
                           f"({type(exc).__name__}: {text})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DistmtlError(f"model.weights: {path}: does not hold a state dict of tensors")
    return state


def load_backbone_weights(backbone: nn.Module, path: str | Path, in_chans: int) -> None:
    """Load a weights file into a backbone built with ``num_classes=0``.

    The classifier of the file (named by the model's pretrained config) is dropped and the first
    convolution adapted to ``in_chans`` with timm's helper, as timm does for its own weights; any
    other key missing or left over is an error that names it."""
    state = read_weights_file(path)
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    classifiers = cfg.get("classifier") or ()
    for name in (classifiers,) if isinstance(classifiers, str) else classifiers:
        state.pop(f"{name}.weight", None)
        state.pop(f"{name}.bias", None)
    first_conv = cfg.get("first_conv")
    for name in (first_conv,) if isinstance(first_conv, str) else (first_conv or ()):
        key = f"{name}.weight"
        if key in state and state[key].dim() == 4 and state[key].shape[1] != in_chans:
            state[key] = timm.models.adapt_input_conv(in_chans, state[key])
    own = backbone.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        parts = ([f"{len(missing)} missing (e.g. {', '.join(missing[:3])})"] if missing else []) + \
                ([f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})"] if unexpected else [])
        raise DistmtlError(f"model.weights: {path}: keys do not match backbone "
                           f"'{cfg.get('architecture', '?')}': {'; '.join(parts)}")
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:
        raise DistmtlError(f"model.weights: {path}: shapes do not match the backbone "
                           f"({' '.join(str(exc).split())[:200]})") from None


def create_backbone(name: str, in_chans: int, pretrained: bool = False, weights: str | Path | None = None,
                    **kwargs) -> nn.Module:
    """Any timm model by name, as a feature extractor (``num_classes=0``: pooled features).

    ``weights`` (a file) replaces timm's pretrained weights: nothing is downloaded for them."""
    check_backbone(name)
    try:
        model = timm.create_model(name, pretrained=pretrained and weights is None, num_classes=0,
                                  in_chans=in_chans, **kwargs)
    except TypeError as exc:
        raise DistmtlError(f"model.backbone_kwargs: {name} rejects them ({exc})") from None
    except (OSError, RuntimeError, ValueError) as exc:
        if name.startswith(HUB_PREFIXES) or pretrained:
            raise _hub_error(name, exc) from None
        raise
    if weights is not None:
        load_backbone_weights(model, weights, in_chans)
    return model


class ArcMarginHead(nn.Module):
    """Cosine classifier with an additive angular margin (ArcFace); margin 0 is a scaled softmax."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0, margin: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)
        self.scale, self.margin = scale, margin

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        cosine = F.linear(F.normalize(x), F.normalize(self.weight))
        if target is None or self.margin == 0 or not self.training:
            return self.scale * cosine
        theta = torch.acos(cosine.clamp(-1 + 1e-7, 1 - 1e-7))
        one_hot = F.one_hot(target.clamp(min=0), cosine.shape[1]).bool()
        return self.scale * torch.where(one_hot, torch.cos(theta + self.margin), cosine)


def identity_head(task: Task, in_features: int) -> nn.Module:
    """``options.head``: ``arcface`` (default; margin 0 is a normalised softmax) or ``softmax``."""
    if task.options.get("head", "arcface") == "softmax":
        return nn.Linear(in_features, task.num_outputs)
    return ArcMarginHead(in_features, task.num_outputs, scale=float(task.options.get("scale", 30.0)),
                         margin=float(task.options.get("margin", 0.0)))


def make_head(kind: str, in_features: int, out_features: int, hidden: int, drop: float) -> nn.Module:
    if kind == "linear":
        return nn.Sequential(nn.Dropout(drop), nn.Linear(in_features, out_features))
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(drop),
                             nn.Linear(hidden, out_features))
    raise DistmtlError(f"model.head: unknown head '{kind}'{close_matches(kind, ['linear', 'mlp'])}")


class BranchHead(nn.Module):
    """A task's own copy of the backbone's last stages (and its pooling) before the task head."""

    def __init__(self, branch: nn.Module, head: nn.Module):
        super().__init__()
        self.branch, self.head = branch, head

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        return self.head(self.branch(x), *args)


def split_last_stages(backbone: nn.Module, stages: int, name: str, in_chans: int) -> nn.Module:
    """Cut the last ``stages`` stages and the global pooling off ``backbone`` (in place) and return
    them as one module: ``branch(backbone(x)) == original(x)``, checked on a probe input, so a
    backbone whose forward does more after its stages is refused rather than silently changed."""
    info = [f["module"] for f in getattr(backbone, "feature_info", None) or []]
    pool = getattr(backbone, "global_pool", None)
    refused = DistmtlError(f"model.task_stages: backbone '{name}' does not split into a shared trunk "
                           f"and its last {stages} stage(s); use 0 (everything shared)")
    if not isinstance(pool, nn.Module) or not hasattr(backbone, "reset_classifier"):
        raise refused
    if not 0 < stages < len(info):
        raise DistmtlError(f"model.task_stages: {stages} is not possible for backbone '{name}' "
                           f"(it has {max(len(info) - 1, 0)} stages that can be given to each task)")
    probe = torch.randn(2, in_chans, 64, 64, generator=torch.Generator().manual_seed(0))
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        expected = backbone(probe)
    parts = [backbone.get_submodule(m) for m in info[-stages:]] + [copy.deepcopy(pool)]
    for module_name in info[-stages:]:
        parent, _, child = module_name.rpartition(".")
        setattr(backbone.get_submodule(parent) if parent else backbone, child, nn.Identity())
    backbone.reset_classifier(0, global_pool="")
    branch = nn.Sequential(*parts)
    try:
        with torch.no_grad():
            ok = torch.allclose(branch.eval()(backbone(probe)), expected, atol=1e-5)
    except RuntimeError:  # the forward does more after the stages (a head convolution, a norm)
        ok = False
    backbone.train(was_training)
    branch.train(was_training)
    if not ok:
        raise refused
    return branch


def _call_with(module: nn.Module, params: Mapping[str, torch.Tensor], *args):
    return torch.func.functional_call(module, dict(params), args)


class MultiTaskNet(nn.Module):
    def __init__(self, tasks: Mapping[str, Task], backbone: str = "test_resnet", in_chans: int = 3,
                 pretrained: bool = False, head: str = "linear", hidden: int = 256,
                 drop_rate: float = 0.0, backbone_kwargs: Mapping | None = None,
                 weights: str | Path | None = None, task_stages: int = 0):
        """``task_stages``: how many of the backbone's last stages each task gets a copy of (0: the
        whole backbone is shared). The shared features are then the trunk's unpooled feature map."""
        super().__init__()
        self.tasks = dict(tasks)
        self.backbone = create_backbone(backbone, in_chans, pretrained, weights=weights,
                                        **dict(backbone_kwargs or {}))
        self.num_features = self.backbone.num_features
        self.task_stages = int(task_stages or 0)
        branch = None
        if self.task_stages:
            if any(task.kind == "identity" for task in self.tasks.values()):
                raise DistmtlError("model.task_stages: not available with an identity task "
                                   "(its embedding is the shared, pooled features)")
            branch = split_last_stages(self.backbone, self.task_stages, backbone, in_chans)
        heads = {}
        for name, task in self.tasks.items():
            if task.kind == "identity":
                heads[name] = identity_head(task, self.num_features)
            else:
                heads[name] = make_head(head, self.num_features, task.num_outputs, hidden, drop_rate)
            if branch is not None:
                heads[name] = BranchHead(copy.deepcopy(branch), heads[name])
        self.heads = nn.ModuleDict(heads)
        self.shared_dim = self.backbone.num_features if branch is None else \
            self.backbone.feature_info[-self.task_stages - 1]["num_chs"]

    @staticmethod
    def pooled(features: torch.Tensor) -> torch.Tensor:
        """The shared features as one vector per sample (a trunk's feature map averaged over space)."""
        return features.mean(dim=(2, 3)) if features.dim() == 4 else features

    def forward(self, x: torch.Tensor, identity_targets: Mapping[str, torch.Tensor] | None = None):
        """Returns ``(outputs, features)``: raw outputs per task (logits / regression values)."""
        features = self.backbone(x)
        return self.apply_heads(features, identity_targets), features

    def apply_heads(self, features: torch.Tensor, identity_targets: Mapping[str, torch.Tensor] | None = None,
                    detach_heads: bool = False) -> dict[str, torch.Tensor]:
        """Every task's output from the shared features. ``detach_heads``: the heads' parameters
        are used detached, so a loss on these outputs trains the backbone and leaves the heads
        alone (``train.shield_heads``)."""
        outputs = {}
        for name, head in self.heads.items():
            if detach_heads:
                params = {k: v.detach() for k, v in head.named_parameters()}
                run = functools.partial(_call_with, head, params)
            else:
                run = head
            if self.tasks[name].kind == "identity":
                outputs[name] = run(features, (identity_targets or {}).get(name))
            elif self.tasks[name].kind == "regression":
                low, high = self.tasks[name].value_range
                outputs[name] = low + (high - low) * (torch.tanh(run(features)) + 1) / 2
            else:
                outputs[name] = run(features)
        return outputs

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised shared features: the face embedding of an identity task."""
        return F.normalize(self.backbone(x), dim=1)

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the backbone's last main-path layer with weights (GradNorm's shared layer).

        Residual shortcuts (timm's ``downsample`` / ``shortcut`` / ``skip`` submodules) are left
        out: they are registered, and run, after the block's last convolution, but they are a side
        branch, not the layer every feature passes through."""
        last = None
        for name, module in self.backbone.named_modules():
            if SHORTCUT_NAMES.intersection(name.split(".")):
                continue
            if getattr(module, "weight", None) is not None and isinstance(module.weight, nn.Parameter) \
                    and module.weight.dim() > 1:
                last = module
        return [p for p in last.parameters(recurse=False)] if last is not None else []
