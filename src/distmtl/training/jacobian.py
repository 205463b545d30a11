"""One training step of Jacobian descent (``weighting: {name: jd, ...}``), by manual optimisation.

:class:`~distmtl.training.module.MultiTaskModule` switches to Lightning's manual optimisation when its
weighting aggregates gradients; each step then runs :func:`jacobian_step`:

1. forward; the task losses of the tasks labelled in the batch and the coupling terms;
2. the rows (:func:`objective_rows`: one per task, coupling added to the task it supervises, or
   coupling terms as rows of their own; see :mod:`distmtl.weighting.jd`);
3. ``torchjd.autojac.mtl_backward``: the Jacobian of the rows with respect to the backbone's
   parameters (``.jac``) and each head's gradient (``.grad``);
4. under data parallelism, the Jacobian and the head gradients are averaged over the processes
   (one all-reduce) *before* aggregation, after the processes agreed on the set of rows, so every
   process aggregates the same matrix and takes the same step;
5. ``torchjd.autojac.jac_to_grad`` with the aggregator, outside autocast (float32), its random
   numbers (if any) from a stream seeded by (seed, step);
6. gradient clipping (``trainer.gradient_clip_val``), then the optimiser and LR-schedule step.

AMP: under ``16-mixed`` the rows are multiplied by the loss scale before differentiation (as
``GradScaler.scale`` does), the Jacobian is divided by it before aggregation (several aggregators
are not scale-invariant) and the result is multiplied back, so that Lightning's scaler unscales,
skips steps with overflow and adapts its scale exactly as in the automatic path. ``bf16-mixed``
needs no scale.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from distmtl.losses import task_loss


def supervised_task(term: str) -> str:
    """The task a coupling term supervises: the one after the arrow (``coann:expression->au`` -> ``au``)."""
    return term.rsplit("->", 1)[-1]


def objective_rows(losses: Mapping[str, Tensor], terms: Mapping[str, Tensor], tasks, coupling: str,
                   nonzero_terms: set[str] | None = None) -> dict[str, Tensor]:
    """The objectives in a fixed order: tasks in task order, then (``rows``) the coupling terms.

    ``losses`` holds only the tasks labelled in the batch. With ``coupling: task`` a term joins the
    row of its supervised task (creating it when that task has no label in the batch); with
    ``rows`` each term in ``nonzero_terms`` (default: every term) is a row named after itself.
    """
    rows: dict[str, Tensor] = {}
    if coupling == "task":
        for task in tasks:
            parts = ([losses[task]] if task in losses else []) + \
                [value for name, value in terms.items() if supervised_task(name) == task]
            if parts:
                rows[task] = torch.stack([p.reshape(()) for p in parts]).sum()
        return rows
    for task in tasks:
        if task in losses:
            rows[task] = losses[task]
    for name, value in terms.items():
        if nonzero_terms is None or name in nonzero_terms:
            rows[name] = value
    return rows


def _distributed(module) -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        module.trainer.world_size > 1


def agreed_presence(module, present: Tensor) -> Tensor:
    """Under data parallelism, a row exists on every process when it exists on any (max over ranks)."""
    if _distributed(module):
        present = present.clone()
        torch.distributed.all_reduce(present, op=torch.distributed.ReduceOp.MAX)
    return present


def average_over_processes(module, shared, heads) -> None:
    """Average the shared parameters' ``.jac`` and the heads' ``.grad`` over the processes in one
    all-reduce (a head without a gradient on this process contributes zeros)."""
    if not _distributed(module):
        return
    for p in heads:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    parts = [p.jac for p in shared] + [p.grad for p in heads]
    flat = torch.cat([t.reshape(-1).float() for t in parts])
    torch.distributed.all_reduce(flat)
    flat /= module.trainer.world_size
    offset = 0
    for t in parts:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t).to(t.dtype))
        offset += n


def _scaler(module):
    """The AMP plugin's GradScaler (``16-mixed``), or None."""
    return getattr(module.trainer.precision_plugin, "scaler", None)


def jacobian_step(module, batch) -> None:
    """One step of Jacobian descent for ``module`` on ``batch`` (see the module docstring)."""
    from torchjd.autojac import jac_to_grad, mtl_backward

    weighting = module.weighting
    tasks = list(module.tasks)
    targets, masks = batch["targets"], batch["masks"]
    id_targets = {t: targets[t] for t, task in module.tasks.items() if task.kind == "identity"}
    module._nonfinite = None
    outputs, features = module.net(batch["image"], id_targets)
    present_tasks = torch.stack([masks[t].any() for t in tasks]).float()
    present_tasks = agreed_presence(module, present_tasks)
    labelled = [t for t, on in zip(tasks, present_tasks.tolist()) if on > 0]
    losses = {t: task_loss(module.tasks[t], outputs[t], targets[t], masks[t], **module.loss_options[t])
              for t in labelled}
    module._check_finite(losses, "task loss")
    terms = module.coupling_terms(outputs, features, targets, masks, id_targets)
    module._check_finite(terms, "coupling term")
    nonzero = None
    if weighting.coupling == "rows" and terms:
        names = list(terms)
        values = agreed_presence(module, torch.stack([terms[n].detach().abs() for n in names]).float())
        nonzero = {n for n, v in zip(names, values.tolist()) if v > 0}
    rows = objective_rows(losses, terms, tasks, weighting.coupling, nonzero)
    bs = batch["image"].shape[0]
    if module._nonfinite is not None or not rows:
        if module._nonfinite is not None:
            module.nan_skipped += 1
            module.log("train/nan_skipped", float(module.nan_skipped))
        return None

    opt = module.optimizers()
    opt.zero_grad()
    shared = [p for p in module.net.backbone.parameters() if p.requires_grad]
    shared_ids = {id(p) for p in shared}
    heads = [p for p in module.net.heads.parameters() if p.requires_grad and id(p) not in shared_ids]
    scaler = _scaler(module)
    names = list(rows)
    # GradScaler.scale (not a bare product): it also sets up the scaler state its unscale_ needs
    values = [scaler.scale(rows[n]) if scaler is not None else rows[n] for n in names]
    scale = float(scaler.get_scale()) if scaler is not None else 1.0
    # rows share parts of the graph (a coupling term reads the logits of two heads): keep it for each
    # under autocast the vmapped backward of reduced-precision ops fails: one row at a time there
    chunk = 1 if features.dtype in (torch.float16, torch.bfloat16) else None
    mtl_backward(values, features=features, shared_params=shared, retain_graph=True,
                 parallel_chunk_size=chunk)
    for p in shared:  # a parameter the features do not depend on (none in a timm backbone)
        if not hasattr(p, "jac"):
            p.jac = torch.zeros((len(names), *p.shape), device=p.device, dtype=p.dtype)
    average_over_processes(module, shared, heads)

    device_type = features.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        jacobians = [p.jac for p in shared]
        if scale != 1.0:
            for j in jacobians:
                j.div_(scale)
        finite = all(bool(torch.isfinite(j).all()) for j in jacobians)
        if finite:
            # aggregators that draw random numbers (PCGrad's order, GradVac, GradDrop, Random) draw
            # from a stream seeded by (seed, step): the same on every process and after a resume
            devices = [features.device] if features.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(int(module.config["seed"]) * 1_000_003 + int(module.global_step))
                weights = jac_to_grad(shared, weighting.aggregator_for(names))
        else:  # overflow under 16-mixed: hand the scaler non-finite gradients so it skips and rescales
            for p in shared:
                p.grad = p.jac.sum(0).to(p.dtype)
                del p.jac
            weights = None
        clip = module.config["trainer"].get("gradient_clip_val")
        if scale != 1.0:
            for p in heads:
                if p.grad is not None:
                    p.grad.div_(scale)
        if clip and finite:
            torch.nn.utils.clip_grad_norm_([p for p in shared + heads if p.grad is not None], float(clip))
        if scale != 1.0:
            for p in shared + heads:
                if p.grad is not None:
                    p.grad.mul_(scale)
    opt.step()
    scheduler = module.lr_schedulers()
    if scheduler is not None:
        scheduler.step()

    weighting.record(names, weights)
    total = sum(v.detach() for v in rows.values())
    module.log("train/loss", total, prog_bar=True, batch_size=bs)
    module.log_dict({f"loss/{t}": v.detach() for t, v in losses.items()}, batch_size=bs)
    module.log_dict({f"term/{k}": v.detach() for k, v in terms.items()}, batch_size=bs)
    module.log_dict({f"weight/{n}": w for n, w in weighting.row_weights.items()}, batch_size=bs)
    return None
