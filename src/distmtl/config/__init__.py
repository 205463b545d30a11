"""Experiment configuration: one YAML file, defaults, ``key.path=value`` overrides, validation.

``loading.py`` reads, merges and type-checks; ``checks.py`` refuses values no run can use;
``environment.py`` handles what looks outside the YAML (paths relative to the config file,
Lightning's Trainer arguments, loggers).
"""

from distmtl.config.loading import (
    DEFAULTS,
    EDGE_DEFAULTS,
    FREE,
    SOURCE_KEYS,
    apply_override,
    dump_config,
    load_config,
    materialise,
    early_plateau_warning,
    plateau_patience,
    resolve,
)

__all__ = ["DEFAULTS", "EDGE_DEFAULTS", "FREE", "SOURCE_KEYS", "apply_override", "dump_config", "load_config",
           "materialise", "early_plateau_warning", "plateau_patience", "resolve"]
