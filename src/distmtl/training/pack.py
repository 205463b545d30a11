"""``distmtl data pack``: an experiment's sources, as read, written to sharded folders."""

from __future__ import annotations

import time
from pathlib import Path

from distmtl.data.shards import write_shards
from distmtl.errors import DistmtlError, close_matches
from distmtl.training.experiment import build_tasks, read_source, source_label


def pack_sources(config: dict, out_dir: str | Path, *, names: list[str] | None = None,
                 include_eval: bool = False, progress: bool = True) -> list[tuple[str, Path, int]]:
    """Pack the config's training sources (and with ``include_eval`` its val and test sources) into
    ``out_dir/<source name>``; returns ``(name, folder, rows)`` per packed source."""
    data = config["data"]
    specs = [(s, f"data.sources[{i}]") for i, s in enumerate(data["sources"])]
    if include_eval:
        specs += [(data[k], f"data.{k}") for k in ("val", "test") if data[k] is not None]
    labelled = [(source_label(s), s, where) for s, where in specs]
    if names:
        known = [n for n, _, _ in labelled]
        for name in names:
            if name not in known:
                raise DistmtlError(f"--source: no source named '{name}'{close_matches(name, known)}; "
                                   f"sources: {', '.join(known)}")
        labelled = [x for x in labelled if x[0] in names]
    tasks = build_tasks(config)
    out = Path(out_dir)
    packed = []
    for name, spec, where in labelled:
        if isinstance(spec, dict) and "shards" in spec:
            raise DistmtlError(f"{where}: '{name}' is already packed ({spec['shards']})")
        start = time.monotonic()
        loaded = read_source(spec, tasks, config, where)
        folder = out / name
        origin = spec if isinstance(spec, str) else (spec.get("csv") or f"loader {spec.get('loader')}")
        write_shards(loaded, folder, origin=str(origin), progress=progress)
        if progress:
            print(f"{name}: {len(loaded.frame):,} images -> {folder} ({time.monotonic() - start:.1f} s)",
                  flush=True)
        packed.append((name, folder, len(loaded.frame)))
    return packed
