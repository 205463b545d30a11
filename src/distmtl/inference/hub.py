"""Model folders on the Hugging Face Hub: download (with the hub's cache), upload with a model card.

A model is named either by a local folder written by ``distmtl export`` or by a Hub repository id
(``org/name``, optionally at a ``revision``). Downloads go through :func:`huggingface_hub.snapshot_download`,
so they land in (and are read from) the standard Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``);
with ``HF_HUB_OFFLINE=1`` only the cache is read. :func:`push_model` uploads a folder in one commit
together with a generated ``README.md`` model card.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distmtl.errors import DistmtlError
from distmtl.inference.export import CONFIG_NAME, ONNX_NAME, WEIGHTS_NAME, read_model_config

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME, ONNX_NAME)
CARD_NAME = "README.md"
STUDY_RESULTS = "results.md"  # written by distmtl compare in its output folder


def is_repo_id(name: str) -> bool:
    return bool(REPO_ID.match(str(name))) and ".." not in str(name)


def resolve_model_dir(model: str | Path, *, revision: str | None = None,
                      cache_dir: str | Path | None = None) -> Path:
    """The local folder of ``model``: the folder itself, or the cached snapshot of a Hub repo."""
    path = Path(model)
    if path.is_dir():
        if revision is not None:
            raise DistmtlError(f"{model}: a revision names a Hub commit, not a local folder")
        return path
    if not is_repo_id(str(model)):
        raise DistmtlError(f"{model}: model folder not found (and not a Hub repo id org/name)")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = f"{model}" + (f"@{revision}" if revision else "")
    try:
        local = snapshot_download(str(model), revision=revision, cache_dir=cache_dir,
                                  allow_patterns=list(MODEL_FILES) + [CARD_NAME])
    except RevisionNotFoundError:
        raise DistmtlError(f"{where}: revision '{revision}' not found on the Hugging Face Hub") from None
    except GatedRepoError:
        raise DistmtlError(f"{where}: the Hub repo is gated; accept its terms and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise DistmtlError(f"{model}: no local model folder and no such Hub repo (or it is private: "
                           "log in with hf auth login)") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        why = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "the Hub cannot be reached"
        raise DistmtlError(f"{where}: not a local folder, not in the Hugging Face cache "
                           f"({cache_dir or constants.HF_HUB_CACHE}) and {why}") from None
    except OSError as exc:
        raise DistmtlError(f"{where}: download failed ({' '.join(str(exc).split())[:200]})") from None
    local = Path(local)
    if not (local / CONFIG_NAME).is_file():
        raise DistmtlError(f"{where}: the Hub repo holds no {CONFIG_NAME}; is it a model written by distmtl export?")
    return local


# --------------------------------------------------------------------------- the model card


def find_study_results(config: Mapping[str, Any]) -> Path | None:
    """``results.md`` of the compare study the model's checkpoint came from, when there is one.

    compare writes ``OUT/runs/<variant>/seed<k>/checkpoints/best.ckpt`` and ``OUT/results.md``."""
    source = config.get("source_checkpoint")
    if not source:
        return None
    for parent in list(Path(source).parents)[:6]:
        candidate = parent / STUDY_RESULTS
        if candidate.is_file() and (parent / "runs").is_dir():
            return candidate
    return None


def _task_lines(config: Mapping[str, Any]) -> list[str]:
    lines = ["| task | kind | outputs, in order |", "|---|---|---|"]
    for name, spec in config["tasks"].items():
        labels = list(spec.get("labels", []))
        shown = ", ".join(map(str, labels)) if spec["kind"] != "identity" else f"{len(labels)} training identities"
        if spec.get("range"):
            shown += f" (range {spec['range'][0]} to {spec['range'][1]})"
        lines.append(f"| {name} | {spec['kind']} | {shown} |")
    return lines


def _data_lines(config: Mapping[str, Any]) -> list[str]:
    summary = config.get("data_summary") or {}
    sources = summary.get("sources") or []
    if not sources:
        return ["Not recorded."]
    lines = ["| source | images | labelled, per task |", "|---|---|---|"]
    for src in sources:
        counts = ", ".join(f"{t}: {n}" for t, n in (src.get("annotated") or {}).items() if n)
        lines.append(f"| {src.get('name')} | {src.get('size')} | {counts or '-'} |")
    return lines


def model_card(config: Mapping[str, Any], repo_id: str, results: str | None = None) -> str:
    """The ``README.md`` of a pushed model: metadata, tasks and label orders, preprocessing,
    thresholds, training data and, when given, the comparison study's results table."""
    pre = config["preprocessing"]
    faces = config.get("faces") or {"mode": "none"}
    tags = ["distmtl", "multi-task-learning", "image-classification", *config["tasks"].keys()]
    meta = ["---", "library_name: distmtl", "pipeline_tag: image-classification",
            "tags:", *(f"- {t}" for t in dict.fromkeys(tags)), "---", ""]
    model = config["model"]
    lines = [
        f"# {config.get('name') or repo_id}", "",
        "A multi-task image model trained with distmtl: one shared backbone, one head per task. "
        f"Backbone: `{model['backbone']}` (timm), heads: `{model.get('head', 'linear')}`.", "",
        "## Use", "",
        "With distmtl installed:", "",
        "```bash",
        f"distmtl predict faces/ --model {repo_id} -o predictions.csv",
        "```", "",
        "```python",
        "from distmtl import Predictor",
        f'predictor = Predictor.from_pretrained("{repo_id}")',
        'frame = predictor.predict(["face.png"])',
        "```", "",
        "## Tasks", "",
        "Output columns follow these label orders.", "",
        *_task_lines(config), "",
        "## Preprocessing", "",
        f"Inputs are resized to {pre['size']} x {pre['size']} ({pre.get('interpolation', 'bilinear')}, "
        f"antialiased), {'grayscale' if int(pre['channels']) == 1 else 'RGB'}, scaled to [0, 1] and "
        f"normalised with mean {pre['mean']} and std {pre['std']}. "
        + ("No face detection or alignment is applied." if faces.get("mode") == "none" else
           f"Faces are first found and cropped (`{json.dumps(faces, sort_keys=True)}`)."), "",
    ]
    thresholds = config.get("thresholds") or {}
    if thresholds:
        lines += ["## Decision thresholds", "",
                  "A label is predicted present when its probability exceeds its threshold.", ""]
        for task, values in thresholds.items():
            source = (config.get("calibration") or {}).get(task, {})
            note = f"calibrated on {Path(str(source['source'])).name}" if source.get("source") \
                else source.get("note", "")
            lines.append(f"- **{task}** ({note}): " + ", ".join(f"{k} {float(v):.2f}" for k, v in values.items()))
        lines.append("")
    lines += ["## Training data", "", *_data_lines(config), ""]
    if results:
        lines += ["## Comparison study", "",
                  "The study this model comes from (`distmtl compare`: single-task, multi-task and coupled "
                  "variants on the same data and step budget):", "", results.strip(), ""]
    lines += ["## Files", "",
              f"`{WEIGHTS_NAME}` (weights), `{CONFIG_NAME}` (everything needed to rebuild and run the model)"
              + (f", `{ONNX_NAME}`" if config.get("onnx") else "") + ".",
              f"Exported with distmtl {config.get('distmtl_version', '?')}, torch {config.get('torch_version', '?')}, "
              f"timm {config.get('timm_version', '?')}.", ""]
    return "\n".join(meta + lines)


# --------------------------------------------------------------------------- upload


def push_model(model_dir: str | Path, repo_id: str, *, revision: str | None = None, private: bool = False,
               token: str | None = None, results: str | Path | None = None,
               commit_message: str | None = None, api=None) -> dict[str, Any]:
    """Upload a model folder and its generated model card to ``repo_id`` in one commit.

    ``results``: a study's ``results.md`` for the card (default: found beside the compare run the
    checkpoint came from). Returns ``{"url", "card", "files"}``."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    model_dir = Path(model_dir)
    config = read_model_config(model_dir)
    if not is_repo_id(repo_id):
        raise DistmtlError(f"--repo: expected a Hub repo id org/name, got '{repo_id}'")
    results_path = Path(results) if results is not None else find_study_results(config)
    if results_path is not None and not results_path.is_file():
        raise DistmtlError(f"--results: {results_path}: file not found")
    card = model_card(config, repo_id, results_path.read_text() if results_path is not None else None)
    files = [name for name in MODEL_FILES if (model_dir / name).is_file()]
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(model_dir / name)) for name in files]
    operations.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card.encode()))
    api = api or HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(repo_id, operations=operations, revision=revision,
                                 commit_message=(commit_message
                                                 or f"Upload {config.get('name') or 'model'} with distmtl"))
    except HfHubHTTPError as exc:
        raise DistmtlError(f"push to {repo_id}: {' '.join(str(exc).split())[:200]}") from None
    return {"url": getattr(info, "commit_url", None) or str(info), "card": card, "files": files + [CARD_NAME],
            "results": str(results_path) if results_path is not None else None}
