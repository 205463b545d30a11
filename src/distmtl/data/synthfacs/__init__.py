"""SynthFACS: a procedural face dataset with expressions, 17 AUs and valence/arousal.

Faces are drawn with numpy and Pillow only (seeded, no network): an identity (face shape,
feature geometry, colours, hair, glasses, beard; :mod:`.faces`) is deformed by 17 AU
intensities (:mod:`.geometry`, which documents the effect and image region of every AU),
rasterised with imaging nuisance (:mod:`.render`), and labelled by a stochastic
expression -> AU generator close to, but not equal to, Du et al. 2014 (:mod:`.generator`).
:func:`generate` writes the dataset (three disjoint training sources, an oracle CSV, val, test
and an optional compound-expression test set; :mod:`.dataset`).
"""

from distmtl.data.synthfacs.contact_sheet import contact_sheet
from distmtl.data.synthfacs.dataset import (
    COLUMNS, PRESETS, SPLIT_CODES, SYNTHFACS_VERSION, generate, generate_preset, sample_image)
from distmtl.data.synthfacs.faces import Identity, make_identity, split_identities
from distmtl.data.synthfacs.generator import (
    COMPOUND_EXPRESSIONS, COMPOUND_GENERATOR_TABLE, DU2014_BASIC, DU2014_COMPOUND,
    GENERATOR_TABLE, PERTURBATION_SEED, VA_CENTROIDS, ExpressionTable, Labels, du2014_matrix,
    sample_labels)
from distmtl.data.synthfacs.geometry import AU_EFFECTS, AUEffect, face_ops
from distmtl.data.synthfacs.render import NO_NUISANCE, Nuisance, render_face, sample_nuisance

__all__ = [
    "AU_EFFECTS", "AUEffect", "COLUMNS", "COMPOUND_EXPRESSIONS", "COMPOUND_GENERATOR_TABLE",
    "DU2014_BASIC", "DU2014_COMPOUND", "ExpressionTable", "GENERATOR_TABLE", "Identity",
    "Labels", "NO_NUISANCE", "Nuisance", "PERTURBATION_SEED", "PRESETS", "SPLIT_CODES",
    "SYNTHFACS_VERSION", "VA_CENTROIDS", "contact_sheet", "du2014_matrix", "face_ops",
    "generate", "generate_preset", "make_identity", "render_face", "sample_image",
    "sample_labels", "sample_nuisance", "split_identities",
]
