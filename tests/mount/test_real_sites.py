"""The mount against a site that says no where a real Flywheel says no (`fwfs serve --demo
--strict`: the real resolver's shape, subjects behind `subject-container`, real permissions,
downloads redirected to storage, page limits, analysis inputs on their own route, an audit
trail, slow zip answers, HTTPS from a private CA that only the OS trust store holds).

Issue 11's checks, as a user would make them: `cp -r` of a project is byte-identical to
what the SDK downloads, analyses included; a member of one project only finds its group
in the root; `rm` works with `--delete-reason` and not without it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mountkit import DEMO_PROJECT, Mount, SiteTree, errno_of

pytestmark = pytest.mark.timeout(240)


def sha256_tree(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def project_tree(fw: Any) -> SiteTree:
    """`Anxiety Study` as the SDK downloads it, analyses' inputs and outputs included."""
    tree = SiteTree(fw)
    tree.add_container(DEMO_PROJECT, fw.lookup(DEMO_PROJECT))
    return tree.under(DEMO_PROJECT)


@pytest.fixture(scope="module")
def strict_project(strict_site: Any) -> SiteTree:
    return project_tree(strict_site.client())


def test_cp_r_of_a_project_is_byte_identical_to_the_sdk(
    strict_site: Any,
    strict_project: SiteTree,
    mount_site: Callable[..., Mount],
    tmp_path: Path,
) -> None:
    mount = mount_site(strict_site, read_only=True)
    shutil.copytree(mount / DEMO_PROJECT, tmp_path / "copy")
    expected = {k: hashlib.sha256(v).hexdigest() for k, v in strict_project.files.items()}
    assert any("/analyses/" in k and "/input/" in k for k in expected)
    assert any("/analyses/" in k and "/output/" in k for k in expected)
    assert sha256_tree(tmp_path / "copy") == expected


def test_a_member_of_one_project_finds_its_group_and_reads_it(
    strict_site: Any, mount_site: Callable[..., Mount], tmp_path: Path
) -> None:
    """Grace is a member of `Anxiety Study` only, not of the group `flywheel`: the site's
    `/groups` does not list it to her, yet her mount's root shows it and the project reads
    exactly as the SDK downloads it for her."""
    grace = strict_site.client(member=True)
    assert "flywheel" not in {g.id for g in grace.groups()}
    mount = mount_site(strict_site, key=strict_site.project_member_api_key, read_only=True)
    assert os.listdir(mount.path) == ["flywheel"]
    assert os.listdir(mount / "flywheel") == ["Anxiety Study"]
    shutil.copytree(mount / DEMO_PROJECT, tmp_path / "copy")
    expected = {k: hashlib.sha256(v).hexdigest() for k, v in project_tree(grace).files.items()}
    assert sha256_tree(tmp_path / "copy") == expected
    # A group she is no member of: not listed, and the site's refusal is hers to see.
    assert errno_of(lambda: os.stat(mount / "radiology")) in (errno.EACCES, errno.ENOENT)


def test_rm_on_an_audit_trail_site_needs_a_delete_reason(
    strict_site: Any, mount_site: Callable[..., Mount], unique: Callable[[str], str]
) -> None:
    fw = strict_site.client()
    # Not fw.lookup: the SDK sends no subject-container, and a real core then has no
    # subjects in paths. Its finders still walk them.
    subject = fw.lookup(DEMO_PROJECT).subjects.find_first("label=sub-01")
    session = subject.sessions.find_first("label=ses-baseline")
    label = unique("rm")
    acq = session.add_acquisition(label=label)
    acq.upload_file(flywheel_spec("one.txt", b"one"))
    acq.upload_file(flywheel_spec("two.txt", b"two"))
    path = f"{DEMO_PROJECT}/sub-01/ses-baseline/{label}"

    refusing = mount_site(strict_site, args=["--allow-delete"])
    assert errno_of(lambda: os.unlink(refusing / path / "one.txt")) == errno.EPERM
    assert "--delete-reason" in refusing.log()
    assert {f.name for f in fw.get_acquisition(acq.id).files} == {"one.txt", "two.txt"}

    deleting = mount_site(strict_site, args=["--allow-delete", "--delete-reason", "test_data"])
    os.unlink(deleting / path / "one.txt")
    os.unlink(deleting / path / "two.txt")
    assert {f.name for f in fw.get_acquisition(acq.id).files} == set()
    os.rmdir(deleting / path)
    assert label not in {a.label for a in fw.get_session(session.id).acquisitions()}


def flywheel_spec(name: str, data: bytes) -> Any:
    import flywheel

    return flywheel.FileSpec(name, data)


def test_an_old_core_reads_and_mv_copies_where_it_cannot_move(
    start_site: Callable[..., Any], mount_site: Callable[..., Mount], unique: Callable[[str], str]
) -> None:
    """A 2019 core (`--old-core`): files have no `file_id` or `version`, `/auth/status` no
    `user_id`, and there is no `/files/{id}/move`. The mount reads it all; a rename is
    EXDEV, so `mv` copies the file and deletes the old name, as across filesystems."""
    site = start_site(old_core=True)
    fw = site.client()
    acq = fw.lookup(f"{DEMO_PROJECT}/sub-01/ses-baseline/T1w")
    label = unique("old")
    new = fw.get_session(acq.parents.session).add_acquisition(label=label)
    new.upload_file(flywheel_spec("draft.txt", b"moved by copying"))
    mount = mount_site(site, args=["--allow-delete"])
    t1w = mount / DEMO_PROJECT / "sub-01/ses-baseline/T1w/T1w.nii.gz"
    assert t1w.read_bytes() == fw.download_file_from_container_as_data(acq.id, "T1w.nii.gz")
    folder = mount / DEMO_PROJECT / "sub-01/ses-baseline" / label
    assert errno_of(lambda: os.rename(folder / "draft.txt", folder / "x.txt")) == errno.EXDEV
    out = subprocess.run(["mv", folder / "draft.txt", folder / "final.txt"], capture_output=True)
    assert out.returncode == 0, out.stderr
    files = {f.name for f in fw.get_acquisition(new.id).files}
    assert files == {"final.txt"}
    assert fw.download_file_from_container_as_data(new.id, "final.txt") == b"moved by copying"
