"""What the write scenarios of both tiers share besides `targets.Target`: the scratch tree they
write into, a mount target that keeps its `Mount` (its log and daemon), and the model
target's `FlywheelFS`, for the few assertions only one tier can make."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mountkit
from mountkit import Mount, denied_by_mode
from targets import ModelTarget, MountTarget, Target

from fwfs.fs import FlywheelFS

# The `make_target` fixture (conftest.py).
MakeTarget = Callable[..., Target]


@dataclass(frozen=True)
class Paths:
    """Where a `Scratch` is, in a target's terms."""

    group: str

    @property
    def project(self) -> str:
        return f"{self.group}/P"

    @property
    def notes(self) -> str:
        return f"{self.project}/notes.txt"

    @property
    def sub(self) -> str:
        return f"{self.project}/sub-01"

    @property
    def ses(self) -> str:
        return f"{self.sub}/ses-01"

    @property
    def acq(self) -> str:
        return f"{self.ses}/anat"


class Scratch(mountkit.Scratch):
    """`mountkit.Scratch` (a project P with notes.txt, sub-01/ses-01 with the analysis qc,
    anat with scan.zip) in a group of its own: the tests of a module then share one site,
    which costs a site's start and stop per module, not per test. `paths` says where."""

    def __init__(self, site: Any, fw: Any, group: str) -> None:
        self.paths = Paths(group)
        super().__init__(site, fw, group)


class MountedTarget(MountTarget):
    """A `MountTarget` of a daemon of this test's own."""

    def __init__(self, mount: Mount) -> None:
        super().__init__(mount.path)
        self.mount = mount


def model_of(target: Target) -> FlywheelFS | None:
    """The model behind a model target; None on a mount."""
    return target.fs if isinstance(target, ModelTarget) else None


def mount_of(target: Target) -> Mount | None:
    """The mount behind a mount target; None on the model."""
    return target.mount if isinstance(target, MountedTarget) else None


def by_mode(target: Target, code: int) -> int:
    """The errno for writing into a `dr-x` directory or a `-r--` file: the model's `code`;
    on a mount the kernel's EACCES first unless root (`mountkit.denied_by_mode`)."""
    return denied_by_mode(code) if isinstance(target, MountTarget) else code


def downloads(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Requests for file bytes (`GET .../files/<name>`) among access-log entries."""
    return [e for e in entries if e["method"] == "GET" and "/files/" in e["path"]]


def stop(target: Target) -> None:
    """Stop the daemon behind `target` as a user would (`fwfs unmount`, the model's close),
    so that the next one may take its spool."""
    if isinstance(target, MountedTarget):
        done = mountkit.fwfs("unmount", str(target.mount.path), timeout=120)
        assert done.returncode == 0, done.stderr
    elif isinstance(target, ModelTarget):
        target.fs.close()


def crash(target: Target) -> None:
    """The daemon behind `target` dies mid-write: no flush, no release; only the spool's lock
    goes with the process (on a mount, open files then fail with ENOTCONN)."""
    if isinstance(target, MountedTarget):
        target.mount.kill()
        target.mount.proc.wait(timeout=10)
    elif isinstance(target, ModelTarget):
        assert target.fs.writes is not None
        target.fs.writes.spool.close()
