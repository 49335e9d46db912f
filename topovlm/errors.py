"""Errors shared across the harness (this module imports nothing of the project)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and what is allowed."""
