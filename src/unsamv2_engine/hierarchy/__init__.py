"""Label hierarchies across granularities: the data model, building, nesting, sweeps (files: ``io.hierarchy``)."""

from unsamv2_engine.hierarchy.build import build_hierarchy, hierarchy_from_levels
from unsamv2_engine.hierarchy.model import (
    TABLE_COLUMNS,
    Hierarchy,
    default_level_name,
    granularity_from_name,
    table_rows_for_level,
)
from unsamv2_engine.hierarchy.nesting import check_nesting, enforce_nesting
from unsamv2_engine.hierarchy.sweep import sweep_hierarchy

__all__ = [
    "TABLE_COLUMNS",
    "Hierarchy",
    "build_hierarchy",
    "check_nesting",
    "default_level_name",
    "enforce_nesting",
    "granularity_from_name",
    "hierarchy_from_levels",
    "sweep_hierarchy",
    "table_rows_for_level",
]
