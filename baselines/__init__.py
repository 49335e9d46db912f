"""Baseline layer scorers. Each module registers one scorer with ``@register_scorer``."""
