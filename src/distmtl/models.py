"""The network: a shared timm backbone, pooled features, one head per task."""

from __future__ import annotations

from collections.abc import Mapping

import timm
import torch
import torch.nn.functional as F
from torch import nn

from distmtl.errors import DistmtlError, close_matches
from distmtl.tasks import Task


def check_backbone(name: str) -> None:
    """A one-line error naming ``model.backbone`` and the closest timm names, unless timm knows ``name``."""
    if not isinstance(name, str) or not timm.is_model(name):
        raise DistmtlError(f"model.backbone: unknown timm model '{name}'"
                           f"{close_matches(str(name), timm.list_models(), n=5)}")


def create_backbone(name: str, in_chans: int, pretrained: bool = False, **kwargs) -> nn.Module:
    """Any timm model by name, as a feature extractor (``num_classes=0``: pooled features)."""
    check_backbone(name)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans, **kwargs)
    except TypeError as exc:
        raise DistmtlError(f"model.backbone_kwargs: {name} rejects them ({exc})") from None


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


class MultiTaskNet(nn.Module):
    def __init__(self, tasks: Mapping[str, Task], backbone: str = "test_resnet", in_chans: int = 3,
                 pretrained: bool = False, head: str = "linear", hidden: int = 256,
                 drop_rate: float = 0.0, backbone_kwargs: Mapping | None = None):
        super().__init__()
        self.tasks = dict(tasks)
        self.backbone = create_backbone(backbone, in_chans, pretrained, **dict(backbone_kwargs or {}))
        self.num_features = self.backbone.num_features
        heads = {}
        for name, task in self.tasks.items():
            if task.kind == "identity":
                heads[name] = identity_head(task, self.num_features)
            else:
                heads[name] = make_head(head, self.num_features, task.num_outputs, hidden, drop_rate)
        self.heads = nn.ModuleDict(heads)

    def forward(self, x: torch.Tensor, identity_targets: Mapping[str, torch.Tensor] | None = None):
        """Returns ``(outputs, features)``: raw outputs per task (logits / regression values)."""
        features = self.backbone(x)
        outputs = {}
        for name, head in self.heads.items():
            if isinstance(head, ArcMarginHead):
                outputs[name] = head(features, (identity_targets or {}).get(name))
            elif self.tasks[name].kind == "regression":
                low, high = self.tasks[name].value_range
                outputs[name] = low + (high - low) * (torch.tanh(head(features)) + 1) / 2
            else:
                outputs[name] = head(features)
        return outputs, features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised shared features: the face embedding of an identity task."""
        return F.normalize(self.backbone(x), dim=1)

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the backbone's last layer with weights (GradNorm's shared layer)."""
        last = None
        for module in self.backbone.modules():
            if getattr(module, "weight", None) is not None and isinstance(module.weight, nn.Parameter) \
                    and module.weight.dim() > 1:
                last = module
        return [p for p in last.parameters(recurse=False)] if last is not None else []
