"""What ``distmtl datasets list`` and ``distmtl datasets check NAME --root DIR`` print."""

from __future__ import annotations

import os
from collections.abc import Mapping

from distmtl.data.loaders import get_loader, list_loaders


def _describe_tasks(tasks: Mapping[str, Mapping]) -> str:
    parts = []
    for name, spec in tasks.items():
        labels = spec.get("labels")
        size = f" {len(labels)}" if isinstance(labels, (list, tuple)) else ""
        extra = spec.get("optional_labels")
        more = f" (+{', '.join(extra)})" if extra else ""
        parts.append(f"{name}: {spec.get('kind', '?')}{size}{more}")
    return "; ".join(parts)


def list_datasets() -> str:
    """A table of the named loaders: name, one-line description, canonical tasks."""
    rows = []
    for name in list_loaders():
        try:
            module = get_loader(name)
            description = str(getattr(module, "DESCRIPTION", ""))
            tasks = _describe_tasks(getattr(module, "TASKS", {}))
        except ImportError as exc:  # a loader whose optional dependency is missing
            description, tasks = f"(unavailable: {exc})", ""
        rows.append((name, description, tasks))
    width_name = max([len("name")] + [len(r[0]) for r in rows])
    width_desc = max([len("description")] + [len(r[1]) for r in rows])
    lines = [f"{'name':<{width_name}}  {'description':<{width_desc}}  tasks"]
    lines.append(f"{'-' * width_name}  {'-' * width_desc}  -----")
    lines += [f"{n:<{width_name}}  {d:<{width_desc}}  {t}".rstrip() for n, d, t in rows]
    return "\n".join(lines)


def check_dataset(name: str, root: str | os.PathLike) -> tuple[bool, str]:
    """Run the loader's check on ``root``: (ok, the printable report).

    An unknown ``name`` raises DistmtlError (with close matches); problems with the files
    themselves are part of the report.
    """
    module = get_loader(name)
    if not os.path.isdir(root):
        return False, f"{name} at {root}: PROBLEMS\n  problem: {root} is not a directory"
    result = module.check(root)
    return result.ok, result.format()
