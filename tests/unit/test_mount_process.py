"""The mount's process plumbing without a mount: `-o` parsing, the pid file `fwfs unmount`
waits on, and the spool's default place."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fwfs import daemon
from fwfs.inprocess import default_spool_dir
from fwfs.linux import fuse_options


def test_o_options_as_mfusepy_takes_them() -> None:
    assert fuse_options(["allow_other,uid=1000", "ro", ",,"]) == {
        "allow_other": True,
        "uid": "1000",
        "ro": True,
    }
    assert fuse_options([]) == {}


def test_the_pid_file_names_this_daemon_and_its_spool_until_it_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    mountpoint = Path("/mnt/fw")
    daemon.write_pid_file(mountpoint, Path("/spool"))
    path = daemon.pid_file(mountpoint)
    assert path.is_relative_to(tmp_path / "fwfs" / "run")
    assert json.loads(path.read_text()) == {"pid": os.getpid(), "spool": "/spool"}
    daemon.remove_pid_file(mountpoint)
    assert not path.exists()


def test_a_pid_file_another_daemon_wrote_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    mountpoint = Path("/mnt/fw")
    path = daemon.pid_file(mountpoint)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": os.getpid() + 1, "spool": ""}) + "\n")
    daemon.remove_pid_file(mountpoint)
    assert path.exists()


def test_each_site_and_mountpoint_has_a_spool_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    one = default_spool_dir("https://a/api", Path("/mnt/fw"))
    assert one == default_spool_dir("https://a/api", Path("/mnt/fw"))
    assert one.parent == tmp_path / "fwfs" / "spool"
    assert one != default_spool_dir("https://b/api", Path("/mnt/fw"))
    assert one != default_spool_dir("https://a/api", Path("/mnt/other"))
