"""``topovlm list {scorers,statistics,evaluators,adapters,sources} [pattern]``: what is registered.

For scorers: the module, the default selection policy and every constructor parameter with
its default (a scorer's YAML sets only what differs), like timm's ``list_models``.
"""
from __future__ import annotations

import importlib
from typing import Any

from topovlm.registry import parameters

#: registry kind -> "module:attribute" of the registry
REGISTRIES = {
    "scorers": "topovlm.registry:SCORERS",
    "statistics": "topovlm.token_stats:STATISTICS",
    "evaluators": "topovlm.evaluation:EVALUATORS",
    "adapters": "topovlm.adapters.families:ADAPTERS",
    "sources": "topovlm.data.sources:SOURCES",
}


def registry(kind: str) -> Any:
    module, _, attr = REGISTRIES[kind].partition(":")
    return getattr(importlib.import_module(module), attr)


def rows(kind: str, pattern: str = "*") -> list[dict[str, Any]]:
    if kind == "statistics":  # scorers register the statistics they declare when imported
        scorers = registry("scorers")
        for name in scorers:
            scorers[name]
    reg = registry(kind)
    out = []
    for name in reg.names(pattern):
        obj = reg[name]
        row: dict[str, Any] = {"name": name, "module": getattr(obj, "__module__", None) or reg.module_of(name)}
        if kind == "scorers":
            row["default_policy"] = getattr(obj, "default_policy", "topk")
        if kind == "statistics":
            row["needs_attention"] = obj.needs_attention
            row["description"] = obj.description
            row["module"] = obj.fn.__module__
        if kind != "sources":
            row["parameters"] = parameters(obj)
        out.append(row)
    return out


def format_rows(items: list[dict[str, Any]]) -> str:
    lines = []
    for r in items:
        head = f"{r['name']:<14} {r['module']}"
        if "default_policy" in r:
            head += f"  (default policy: {r['default_policy']})"
        if r.get("description"):
            head += f"  {r['description']}"
        lines.append(head)
        params = r.get("parameters") or {}
        if params:
            lines.append("    " + ", ".join(f"{k}={'<required>' if v is ... else repr(v)}" for k, v in params.items()))
    return "\n".join(lines)
