"""The mfusepy version guard: fwfs patches mfusepy internals only on the versions it knows."""

import importlib.metadata

import pytest

from fwfs.fuse_compat import check_version


def test_the_installed_mfusepy_is_accepted() -> None:
    check_version()
    check_version(importlib.metadata.version("mfusepy"))


@pytest.mark.parametrize("version", ["3.0.1", "3.2.0", "4.0", "3.2.0rc1", "unknown"])
def test_a_version_outside_the_range_is_refused_naming_the_versions(version: str) -> None:
    with pytest.raises(RuntimeError) as info:
        check_version(version)
    message = str(info.value)
    assert f"mfusepy {version} is installed" in message
    assert ">= 3.1 and < 3.2" in message


@pytest.mark.parametrize("version", ["3.1", "3.1.0", "3.1.1", "3.1.9.post1"])
def test_a_version_in_the_range_is_accepted(version: str) -> None:
    check_version(version)
