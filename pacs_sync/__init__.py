"""TerraFusion PACS Sync: the shared core (settings, errors, logging, CLI, local stack)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
