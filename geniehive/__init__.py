"""GenieHive: a control plane and OpenAI-compatible gateway for a hive of model servers."""

from __future__ import annotations

__version__ = "0.1.0"
