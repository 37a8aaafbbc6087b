"""fsspec's own abstract test suite (fsspec.tests.abstract) on `flywheel://`, where it
applies. Its scenarios are trees of `source/subdir/nesteddir` with files at each level:
below a group of the test's own, those are a project, its subjects and their sessions (and
the targets' one level more, acquisitions), which all hold files. Run on the demo site
(the strict one audits deletes, and every scenario ends with rm).

What does not apply is skipped, saying why: Flywheel's directories are containers, made by
mkdir as on the mount, never implied by writing a file below them as an object store's
prefixes are."""

from __future__ import annotations

import uuid
from typing import Any

import flywheel
import fsspec.tests.abstract as abstract  # type: ignore[import-untyped]
import pytest
from remotekit import options_of

from fwfs.remote import FlywheelFileSystem

pytestmark = pytest.mark.timeout(300)

IMPLIED = "writes a file into a directory it never made: no container is made implicitly"


def _not_applicable(why: str) -> Any:
    @pytest.mark.skip(reason=why)
    def test() -> None:
        raise AssertionError("skipped")

    return test


class FlywheelFixtures(abstract.AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture
    def fs(self, demo_site: Any) -> FlywheelFileSystem:
        return FlywheelFileSystem(**options_of(demo_site, allow_delete=True))

    @pytest.fixture
    def group(self, fw: Any) -> str:
        gid = f"fsspec-suite-{uuid.uuid4().hex[:8]}"
        fw.add_group(flywheel.Group(gid, "fsspec's abstract tests"))
        return gid

    @pytest.fixture
    def fs_path(self, group: str) -> str:
        return group


class InProject(FlywheelFixtures):
    """The target is a file: it needs a container that holds files."""

    @pytest.fixture
    def fs_path(self, group: str, fw: Any) -> str:
        fw.get_group(group).add_project(label="P")
        return f"{group}/P"


class TestFlywheelOpen(abstract.AbstractOpenTests, InProject):  # type: ignore[misc]
    pass


class TestFlywheelPipe(abstract.AbstractPipeTests, InProject):  # type: ignore[misc]
    pass


class TestFlywheelGet(abstract.AbstractGetTests, FlywheelFixtures):  # type: ignore[misc]
    # Their scenarios write source/file1 before any mkdir of source.
    test_get_glob_edge_cases = _not_applicable(IMPLIED)
    test_get_with_source_and_destination_as_list = _not_applicable(IMPLIED)


class TestFlywheelPut(abstract.AbstractPutTests, FlywheelFixtures):  # type: ignore[misc]
    pass


class TestFlywheelCopy(abstract.AbstractCopyTests, FlywheelFixtures):  # type: ignore[misc]
    # As for get; and unlike put, fsspec's copy makes no directory before copying a file
    # into it (copies to a new directory, and with maxdepth the directories it cut off).
    test_copy_glob_edge_cases = _not_applicable(IMPLIED)
    test_copy_with_source_and_destination_as_list = _not_applicable(IMPLIED)
    test_copy_file_to_new_directory = _not_applicable(IMPLIED)
    test_copy_file_to_file_in_new_directory = _not_applicable(IMPLIED)
    test_copy_directory_to_existing_directory = _not_applicable(IMPLIED)
    test_copy_directory_to_new_directory = _not_applicable(IMPLIED)
    test_copy_glob_to_existing_directory = _not_applicable(IMPLIED)
    test_copy_glob_to_new_directory = _not_applicable(IMPLIED)
    test_copy_list_of_files_to_new_directory = _not_applicable(IMPLIED)
    test_copy_two_files_new_directory = _not_applicable(IMPLIED)
