"""Tier: multi-process tests under torchrun with gloo on CPU (see tests/dist/harness.py)."""

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/dist/" in str(item.fspath):
            item.add_marker(pytest.mark.dist)
