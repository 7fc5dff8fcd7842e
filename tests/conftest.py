"""Shared fixtures; offline settings for every test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from support import tiny_config_dict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tiny_config(tmp_path: Path) -> dict[str, Any]:
    return tiny_config_dict(tmp_path)
