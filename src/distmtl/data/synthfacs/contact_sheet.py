"""A labelled overview of SynthFACS: one row per expression, one column per identity.

Each cell is a face drawn exactly as the dataset draws it (labels sampled from the generator
table for the row's class, the dataset's nuisance), shown at ``scale`` times its pixel size
(nearest neighbour, so the pixels are the dataset's), with its active AUs written underneath.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from distmtl.data.synthfacs.faces import make_identity
from distmtl.data.synthfacs.generator import GENERATOR_TABLE, ExpressionTable, sample_labels
from distmtl.data.synthfacs.render import DEFAULT_SUPERSAMPLE, render_face, sample_nuisance
from distmtl.tasks import AUS_17

CONTACT_STREAM = 0xC0
_LINE_H = 11
_BG = (250, 250, 250)
_INK = (20, 20, 20)


def contact_sheet(path=None, *, seed: int = 0, size: int = 64, nuisance: float = 1.0,
                  identities: Sequence[int] = tuple(range(8)),
                  table: ExpressionTable = GENERATOR_TABLE, scale: int = 2,
                  supersample: int = DEFAULT_SUPERSAMPLE) -> Image.Image:
    """Render the sheet (and save it as PNG when ``path`` is given)."""
    font = ImageFont.load_default()
    cell = size * scale
    tiles, captions = [], []
    for k in range(len(table.classes)):
        for c, ident_index in enumerate(identities):
            rng = np.random.default_rng([int(seed), CONTACT_STREAM, k, c])
            labels = sample_labels(rng, 1, table, expression=k)
            image = render_face(make_identity(seed, int(ident_index)), labels.intensity[0],
                                sample_nuisance(rng, nuisance), size=size, supersample=supersample)
            tile = Image.fromarray(image)
            if scale != 1:
                tile = tile.resize((cell, cell), Image.Resampling.NEAREST)
            tiles.append(tile)
            active = [au[2:].lstrip("0") for au, on in zip(AUS_17, labels.active[0]) if on]
            captions.append(_wrap(active or ["-"], cell - 2, font))
    line_h = _LINE_H
    caption_h = line_h * max(len(lines) for lines in captions) + 2
    label_w = 8 + max(int(font.getlength(name)) for name in table.classes)
    cols = len(identities)
    sheet = Image.new("RGB", (label_w + cols * cell, len(table.classes) * (cell + caption_h)), _BG)
    draw = ImageDraw.Draw(sheet)
    for k, name in enumerate(table.classes):
        top = k * (cell + caption_h)
        draw.text((4, top + cell // 2 - 6), name, fill=_INK, font=font)
        for c in range(cols):
            left = label_w + c * cell
            sheet.paste(tiles[k * cols + c], (left, top))
            for i, line in enumerate(captions[k * cols + c]):
                draw.text((left + 2, top + cell + i * line_h), line, fill=_INK, font=font)
    if path is not None:
        sheet.save(Path(path), format="PNG")
    return sheet


def _wrap(words: list[str], width: int, font) -> list[str]:
    lines = [words[0]]
    for word in words[1:]:
        if font.getlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines
