"""Fixtures for worker-process tests."""

from __future__ import annotations

from multiprocessing import resource_tracker

import pytest


@pytest.fixture(scope="session", autouse=True)
def _resource_tracker_started():
    # multiprocessing starts its resource tracker (a helper that lives as long as this process)
    # on the first spawn or shared-memory segment; start it up front so `no_leaks` does not
    # count it against a test.
    resource_tracker.ensure_running()
