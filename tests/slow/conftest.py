"""Fixtures of the real-teacher tests."""

import os

import pytest


@pytest.fixture(scope="module")
def real_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("real-home")
    old = os.environ.get("POCKETPILOT_HOME")
    os.environ["POCKETPILOT_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("POCKETPILOT_HOME")
    else:
        os.environ["POCKETPILOT_HOME"] = old
