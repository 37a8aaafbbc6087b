"""docs/SEMANTICS.md, *Writes*: directories are containers, as a tool makes them (`mkdir -p`,
then `cp`). The namespace's scenarios (mkdir, deleting, renaming, refusals) run against the
model and a mount alike: tests/writes/test_write_tree.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from mountkit import Mount, Scratch

pytestmark = pytest.mark.timeout(120)


def test_mkdir_p_then_cp(scratch: Scratch, mount: Mount, tmp_path: Path) -> None:
    local = tmp_path / "scan.nii.gz"
    local.write_bytes(os.urandom(50_000))
    target = mount / "g/P/sub-new/ses-01/T1w"
    os.makedirs(target)
    shutil.copy(local, target)
    acq = scratch.fw.lookup("g/P/sub-new/ses-01/T1w")
    assert acq.container_type == "acquisition"
    data = scratch.fw.download_file_from_container_as_data(acq.id, "scan.nii.gz")
    assert data == local.read_bytes()
