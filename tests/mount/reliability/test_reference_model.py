"""Issue 7, item 2: the reference model through a real mount. The state machine of
tests/refmodel/refmachine.py drives a writable FUSE mount of a private sandbox site with a
short --metadata-ttl, changes the site behind the mount's back through the SDK between
steps, and checks every answer of the mount against a model of the site and the rules of
docs/SEMANTICS.md (tests/refmodel/refmodel.py); see refmachine.py for what it checks.

The same machine runs on the model tier (tests/refmodel/test_model_tier.py): FlywheelFS
with no FUSE, a clock it advances instead of sleeping and faults injected into its site
client, at 10,000 steps and more. This run is the smaller one that adds the kernel and the
FUSE adapter: the kernel's attribute cache and page cache, mmap, the release after close.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flywheel
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test
from mountkit import Mount

# The machine lives beside its model-tier run; this run shares it.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "refmodel"))
from refmachine import Figures, machine
from refmodel import GROUP
from reftargets import MountDriver

LONG = os.environ.get("FWFS_RELIABILITY") == "long"
pytestmark = pytest.mark.timeout(3600 if LONG else 600)

TTL = 2.0  # --metadata-ttl of the mount
# The daemon's own time between its freshness check and the kernel's receipt of the answer
# (a scheduling margin on a loaded machine, not a performance claim).
SLACK = 0.5


def test_the_mount_agrees_with_a_reference_model_of_the_site(
    start_site: Callable[..., Any],
    mount_site: Callable[..., Mount],
    profile: Any,
    record: Callable[[str, object], None],
) -> None:
    site = start_site(demo=False)
    mount = mount_site(site, ttl=TTL)
    figures = Figures()
    Machine = machine(site, MountDriver(mount, TTL, SLACK), figures)
    try:
        run_state_machine_as_test(
            Machine,
            settings=settings(
                max_examples=profile.state_machine_examples,
                stateful_step_count=profile.state_machine_steps,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                derandomize=profile.name == "short",
                database=None,
                # Shrinking replays real mounts for up to five minutes: the long profile
                # does it; the short one (CI) prints the failing run as it was found.
                phases=list(Phase) if profile.name == "long" else [Phase.explicit, Phase.generate],
            ),
        )
        assert mount.alive
    finally:
        # Written whether or not the model found a disagreement: what was checked.
        record("reference model: examples", figures.examples)
        record("reference model: steps", figures.steps)
        record("reference model: waits for the TTL", figures.waits)
        record("reference model: operations checked", dict(sorted(figures.checked.items())))
        record("reference model: bytes verified", figures.bytes_verified)
        record("reference model: site changes", dict(sorted(figures.site_changes.items())))


# ---- what the model found -----------------------------------------------------------------


def test_an_open_never_reads_a_newer_version_cut_to_an_older_size(
    start_site: Callable[..., Any], mount_site: Callable[..., Mount]
) -> None:
    """Found by the model (a long run, shrunk): one file by two paths, its names and an id
    alias of its directory, is two inodes to the kernel. `stat` by names leaves version 1's
    size in the kernel for its share of the TTL; an overwrite by the alias path makes
    version 2 and makes fwfs list the directory again. An open by names then reads version
    2, but the kernel stops at version 1's size: the first 100 bytes of version 2,
    presented as the whole file (tenet 1: never a mix of versions, never a truncated body
    presented as complete). Either version, whole, is right."""
    site = start_site(demo=False)
    fw = site.client()
    fw.add_group(flywheel.Group(GROUP, "Regression"))
    project = fw.get_group(GROUP).add_project(label="P")
    v1, v2 = random.Random(1).randbytes(100), random.Random(2).randbytes(300)
    fw.upload_file_to_container(project.id, flywheel.FileSpec("notes.bin", v1))
    mount = mount_site(site, ttl=TTL)
    by_names = mount / "g/P/notes.bin"
    by_alias = mount / f"g/<id:{project.id}>/notes.bin"
    assert os.stat(by_names).st_size == len(v1)
    with open(by_alias, "wb") as f:
        f.write(v2)
    assert fw.download_file_from_container_as_data(project.id, "notes.bin") == v2
    with open(by_names, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read()
    seen = {v1: "version 1", v2: "version 2"}.get(data)
    if seen is None:
        seen = f"{len(data)} bytes" + (" of version 2's start" if v2.startswith(data) else "")
    assert (seen, size) in (("version 1", len(v1)), ("version 2", len(v2))), (seen, size)
