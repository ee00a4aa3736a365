"""Exact tiled scoring: a model's layer geometry, the memory budget and the tile plan (:mod:`.plan`), and running
a plan through a graph with per-layer distance maps (:mod:`.run`)."""

from .plan import (
    ModelGeometry,
    TilePlan,
    Window,
    default_budget,
    format_bytes,
    geometry_metadata,
    parse_memory,
    plan_tiles,
    read_geometry,
    split_axis,
)

__all__ = ["ModelGeometry", "TilePlan", "Window", "default_budget", "format_bytes", "geometry_metadata",
           "parse_memory", "plan_tiles", "read_geometry", "split_axis"]
