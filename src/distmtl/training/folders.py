"""Run folders that cannot be clobbered: a lock with the owner's pid, a new folder per new run,
resumption only with the run's own config, and one training log across resumptions."""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from distmtl.errors import DistmtlError
from distmtl.io import atomic_write

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
RUN_DIR_ENV = "DISTMTL_RUN_DIR"  # the folder the launching process chose, for the ranks it starts
# keys a resumed run may change without --allow-change: they do not change what is computed
ALWAYS_ALLOWED = ("trainer.enable_progress_bar", "output.dir")


# where launchers put a process's rank: Lightning and torchrun, a node's rank, SLURM's srun, LSF's jsrun
RANK_VARIABLES = ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def is_follower_rank() -> bool:
    """A process that Lightning (or a cluster launcher) started for a rank other than 0."""
    return any(os.environ.get(k, "0") not in ("", "0") for k in RANK_VARIABLES)


# ----------------------------------------------------------------------------- lock


@contextlib.contextmanager
def run_lock(folder: str | Path, what: str = "run") -> Iterator[None]:
    """Hold ``<folder>/.lock`` (an OS lock on a file holding this process's pid) while working.

    A second process on the folder gets a one-line error naming the holder's pid. The OS drops the
    lock when its holder dies, so a killed run leaves no stale lock behind; follower ranks of a
    distributed run do not lock (their launcher holds it).
    """
    if is_follower_rank():
        yield
        return
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise DistmtlError(f"{folder}: in use by another {what} ({holder}; lock file {path}); wait "
                               f"for it to finish or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock; the file stays (removing it would race a waiter)


# ----------------------------------------------------------------------------- checkpoints


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints go to a temporary file first and are renamed into place."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        try:
            atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
        except (OSError, RuntimeError) as exc:
            # a full disk surfaces as OSError(ENOSPC), or from torch's zip writer as "unexpected pos"
            if isinstance(exc, RuntimeError) and not any(m in str(exc) for m in ("unexpected pos", "write")):
                raise
            raise DistmtlError(f"{path}: cannot write the checkpoint ({_write_problem(path, exc)}); "
                               f"the previous checkpoint, if any, is intact") from None


def _write_problem(path, exc: BaseException) -> str:
    import shutil

    if getattr(exc, "errno", None) is not None:
        text = os.strerror(exc.errno)
    else:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if getattr(exc, "errno", None) == errno.ENOSPC or "unexpected pos" in str(exc):
        try:
            free = shutil.disk_usage(Path(path).parent).free
            text = f"no space left on the device, {free / 2**20:.0f} MiB free"
        except OSError:
            text = "no space left on the device"
    return text


# ----------------------------------------------------------------------------- new folder per run


def holds_run(folder: Path) -> bool:
    """A run's outputs are in ``folder`` (or, for a variant of several runs, in a folder below it)."""
    if (folder / "config.yaml").exists() or (folder / "checkpoints").exists():
        return True
    return folder.is_dir() and any((sub / "config.yaml").exists() for sub in folder.iterdir() if sub.is_dir())


def choose_run_folder(out: str | Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Where a ``train`` writes: ``out``, or ``out-v2``, ``out-v3``... when ``out`` holds an earlier
    run (never mixing two runs in one folder); ``overwrite`` empties ``out`` instead, ``resume``
    continues the run in ``out``. Ranks started by the launching process use its choice."""
    out = Path(out)
    inherited = launcher_choice()
    if inherited is not None and is_follower_rank():
        return inherited
    if resume or not holds_run(out):
        chosen = out
    elif overwrite:
        clear_run(out)
        chosen = out
    elif is_follower_rank() or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # ranks started by a cluster launcher cannot agree on a new name: refuse instead
        raise DistmtlError(f"{out}: holds an earlier run; pass --overwrite to replace it, --resume to "
                           f"continue it, or --out for a new folder")
    else:
        n = 2
        while holds_run(out.with_name(f"{out.name}-v{n}")):
            n += 1
        chosen = out.with_name(f"{out.name}-v{n}")
        log.warning("%s holds an earlier run; this run writes to %s (--overwrite replaces it)", out, chosen)
    os.environ[RUN_DIR_ENV] = f"{os.getpid()}:{chosen}"
    return chosen


def launcher_choice() -> Path | None:
    """The folder chosen by this process's parent, when the parent is the launching process.

    The choice is stamped with the launcher's pid: a process started by anything else (torchrun, a
    cluster, a test runner that trained in-process earlier) inherits the variable but not the
    choice, and must not write into another run's folder."""
    value = os.environ.get(RUN_DIR_ENV, "")
    pid, sep, folder = value.partition(":")
    if not sep or not pid.isdigit() or int(pid) != os.getppid():
        return None
    return Path(folder)


RUN_OUTPUTS = ("config.yaml", "metrics.json", "curves.png", "checkpoints", "logs", "tb")


def clear_run(folder: Path) -> None:
    """Remove an earlier run's outputs (``--overwrite``), under its lock; other files stay."""
    import shutil

    with run_lock(folder):
        for entry in folder.iterdir():
            if entry.name in RUN_OUTPUTS or entry.name.startswith(("coactivation_", "relatedness_estimated_",
                                                                   "resume_")):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


# ----------------------------------------------------------------------------- resume: same config


def clean_config(config: Mapping[str, Any]) -> dict:
    """The config as ``config.yaml`` stores it (a YAML round trip, private keys dropped)."""
    clean = {k: v for k, v in config.items() if not str(k).startswith("_")}
    return yaml.safe_load(yaml.safe_dump(clean, sort_keys=True))


def config_hash(config: Mapping[str, Any]) -> str:
    text = json.dumps(clean_config(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    if isinstance(node, list) and any(isinstance(v, Mapping) for v in node):
        out = {}
        for i, value in enumerate(node):
            out.update(flatten(value, f"{prefix}.{i}"))
        return out or {prefix: []}
    return {prefix: node}


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    a, b = flatten(clean_config(old)), flatten(clean_config(new))
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def _allowed(key: str, allowed: Iterable[str]) -> bool:
    return any(key == a or key.startswith(a + ".") or key.split(".")[-1] == a for a in allowed)


def check_resume_config(folder: Path, config: Mapping[str, Any], allow_change: Iterable[str] = ()) -> list[str]:
    """Refuse to resume a run with another config; returns the (allowed) changed keys.

    The run's ``config.yaml`` is what it was started with; a key may differ only when named in
    ``allow_change`` (``max_steps`` or ``train.max_steps``; a prefix such as ``trainer`` covers its keys).
    """
    path = folder / "config.yaml"
    if not path.is_file():
        return []
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DistmtlError(f"{path}: the run's config cannot be read ({str(exc).splitlines()[0]})") from None
    if config_hash(saved) == config_hash(config):
        return []
    changed = changed_keys(saved, config)
    allowed = list(allow_change) + list(ALWAYS_ALLOWED)
    refused = [k for k in changed if not _allowed(k, allowed)]
    if refused:
        shown = ", ".join(refused[:6]) + (f" and {len(refused) - 6} more" if len(refused) > 6 else "")
        raise DistmtlError(f"{folder}: --resume with a config that differs from the run's {path.name} in "
                           f"{shown}; resume with the run's config, or pass --allow-change KEY for each "
                           f"change that is meant")
    return changed


def record_resume_changes(folder: Path, saved: Mapping[str, Any], config: Mapping[str, Any],
                          changed: list[str], step: int) -> Path:
    """``resume_<step>.yaml``: the keys a resumed run changed (old and new values); config.yaml stays."""
    a, b = flatten(clean_config(saved)), flatten(clean_config(config))
    record = {"resumed_at_step": int(step),
              "changed": {k: {"old": a.get(k), "new": b.get(k)} for k in changed}}
    path = folder / f"resume_{int(step)}.yaml"
    atomic_write(path, lambda tmp: Path(tmp).write_text(yaml.safe_dump(record, sort_keys=False)))
    return path


# ----------------------------------------------------------------------------- one log across resumptions


def set_aside_log(folder: Path, resume_step: int) -> None:
    """Keep the log rows written before ``resume_step`` (Lightning's CSV logger starts a new file)."""
    log_file = folder / "logs" / "metrics.csv"
    if not log_file.is_file():
        return
    part = log_file.with_name(f"metrics.until-{int(resume_step):09d}.csv")
    if part.exists():  # resumed from this step before: the current file only holds rows >= it
        log_file.unlink()
    else:
        os.replace(log_file, part)


def merge_logs(folder: Path) -> None:
    """``logs/metrics.csv`` = each set-aside part's rows before its resume step, then the latest rows."""
    logs = folder / "logs"
    parts = sorted(logs.glob("metrics.until-*.csv"))
    if not parts:
        return
    rows: list[dict] = []
    for part in parts:
        limit = int(part.stem.split("-")[-1])
        rows += [r for r in _read_rows(part) if _step(r) < limit]
    current = logs / "metrics.csv"
    if current.is_file():
        rows += _read_rows(current)
    fields = sorted({k for r in rows for k in r})

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(current, write)
    for part in parts:
        part.unlink()


def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _step(row: Mapping[str, str]) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0
