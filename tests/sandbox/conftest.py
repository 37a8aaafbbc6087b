"""Fixtures shared by the sandbox's SDK tests: the demo project and private scratch space."""

import uuid
from typing import Any

import flywheel
import pytest


@pytest.fixture(scope="module")
def anxiety(fw: Any) -> Any:
    return fw.lookup("flywheel/Anxiety Study")


@pytest.fixture(scope="module")
def scratch_group(fw: Any, request: pytest.FixtureRequest) -> Any:
    """A group of the test module's own, so writes never touch what other tests read."""
    module = request.module.__name__.rpartition(".")[2].removeprefix("test_").replace("_", "-")
    gid = f"{module}-{uuid.uuid4().hex[:8]}"
    fw.add_group(flywheel.Group(gid, f"{module} tests"))
    return fw.get_group(gid)


@pytest.fixture
def scratch_project(scratch_group: Any, unique: Any) -> Any:
    return scratch_group.add_project(label=unique("scratch project"))
