"""Relatedness between tasks: tables (built-in, CSV, estimated from data) and their estimation."""

from distmtl.relatedness.table import Relatedness, list_builtin

__all__ = ["Relatedness", "list_builtin"]
