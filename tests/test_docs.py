"""The project's documentation: every config key is documented, and links stay inside the project."""

from __future__ import annotations

import re
from pathlib import Path

from distmtl.config import DEFAULTS, EDGE_DEFAULTS, FREE, SOURCE_KEYS

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DOC = ROOT / "docs" / "config.md"
ROW_KEY = re.compile(r"^\|\s*`([^`]+)`\s*\|", re.MULTILINE)


def config_keys(defaults: dict, prefix: str = "") -> list[str]:
    """Dotted paths of every key of ``defaults``; a free mapping is one key (its entries are the user's)."""
    keys = []
    for key, value in defaults.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and FREE not in value:
            keys.extend(config_keys(value, path))
        else:
            keys.append(path)
    return keys


def all_config_keys() -> list[str]:
    keys = config_keys(DEFAULTS)
    keys += config_keys(EDGE_DEFAULTS, "relatedness[]")
    keys += [f"data.sources[].{k}" for k in sorted(SOURCE_KEYS)]
    return keys


def documented_keys(text: str | None = None) -> set[str]:
    return set(ROW_KEY.findall(CONFIG_DOC.read_text() if text is None else text))


def test_config_keys_walk_reaches_leaves():
    keys = all_config_keys()
    assert "data.augment.crop_scale" in keys and "data.augment" not in keys
    assert "weighting.options" in keys  # a free mapping counts as one key
    assert "relatedness[].dm_a_to_b.form" in keys and "data.sources[].csv" in keys


def test_every_config_key_is_documented():
    missing = [k for k in all_config_keys() if k not in documented_keys()]
    assert not missing, (
        "docs/config.md has no row for config key(s): " + ", ".join(missing)
        + ". Add one table row per key, its dotted path in backticks in the first column, e.g. "
        + f"| `{missing[0]}` | <default> | <what it does> |")


def test_config_doc_has_no_stale_keys():
    known = set(all_config_keys())
    stale = sorted(documented_keys() - known)
    assert not stale, f"docs/config.md documents key(s) that distmtl.config.DEFAULTS does not have: {stale}"


def test_only_a_first_column_key_counts_as_documented():
    text = CONFIG_DOC.read_text().replace("| `data.batch_size` |", "| batch size, see `data.batch_size` |")
    assert "data.batch_size" not in documented_keys(text)
    assert "data.eval_batch_size" in documented_keys(text)


MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def project_markdown() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_docs_link_only_inside_the_project():
    bad = []
    for page in project_markdown():
        text = page.read_text()
        if "shared/reference" in text:
            bad.append(f"{page.name}: mentions shared/reference")
        for target in MARKDOWN_LINK.findall(text):
            if re.match(r"[a-z]+://", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.is_relative_to(ROOT):
                bad.append(f"{page.name}: link {target} leaves the project")
            elif not path.exists():
                bad.append(f"{page.name}: link {target} points to a missing file")
    assert not bad, "; ".join(bad)


def test_methods_doc_covers_every_form_and_strategy():
    from distmtl.losses import A_TO_B_FORMS, B_TO_A_FORMS
    from distmtl.weighting import WEIGHTINGS

    text = (ROOT / "docs" / "methods.md").read_text()
    missing = [f"`{name}`" for name in (*A_TO_B_FORMS, *B_TO_A_FORMS, *WEIGHTINGS)
               if f"`{name}`" not in text]
    assert not missing, f"docs/methods.md does not describe {missing}"
