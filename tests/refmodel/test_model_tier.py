"""The reference model on the model tier (issue 13 item 1): the state machine of
refmachine.py drives FlywheelFS itself, with no FUSE, over a private sandbox site, through a
fault-injecting client (fwfs.testing.faults) and on a clock it advances instead of
sleeping. The same machine drives a real mount in
tests/mount/reliability/test_reference_model.py, with fewer steps.

CI runs at least 10,000 steps; `FWFS_RELIABILITY=long` runs more, with a random seed, and
shrinks a failure. `FWFS_REFMODEL_EXAMPLES` and `FWFS_REFMODEL_STEPS` set the sizes (a quick
look, or a hunt with longer examples).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flywheel
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test
from refmachine import Figures, machine
from refmodel import GROUP, zip_bytes
from reftargets import ModelDriver

LONG = os.environ.get("FWFS_RELIABILITY") == "long"
pytestmark = pytest.mark.timeout(7200 if LONG else 900)

TTL = 10.0  # model seconds: free to wait, so long enough that a look seldom re-lists
# Steps per example, at most (Hypothesis ends some examples sooner).
STEPS = int(os.environ.get("FWFS_REFMODEL_STEPS", 100))
# Examples end after 73 to 82 steps on average (Hypothesis draws each one's length, and the
# draws follow what the site answers): 130 examples made 10,720 steps once and 9,445 another
# time, so 160 leaves a margin of about 15 % over WANTED.
EXAMPLES = int(os.environ.get("FWFS_REFMODEL_EXAMPLES", 600 if LONG else 160))
WANTED = 10_000  # steps in all: the bar
LOOKS_PER_CHANGE = 4  # most steps look: a change costs SDK calls, a look a listing or two


def test_flywheelfs_agrees_with_a_reference_model_of_the_site(
    start_site: Callable[..., Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = start_site(demo=False)
    site.client().add_group(flywheel.Group(GROUP, "Reference model"))
    target = ModelDriver(site, tmp_path / "spool", TTL)
    figures = Figures()
    try:
        run_state_machine_as_test(
            machine(site, target, figures, LOOKS_PER_CHANGE),
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                derandomize=not LONG,
                database=None,
                phases=list(Phase) if LONG else [Phase.explicit, Phase.generate],
            ),
        )
    finally:
        target.shutdown()
        with capsys.disabled():
            print(f"\nreference model (model tier): {figures.summary()}")
    if not {"FWFS_REFMODEL_EXAMPLES", "FWFS_REFMODEL_STEPS"} & set(os.environ):
        assert figures.steps >= WANTED, f"{figures.steps} steps: raise EXAMPLES"


# ---- what the model tier found ------------------------------------------------------------


def test_a_zip_moved_through_the_mount_reads_its_members_from_the_new_place(
    start_site: Callable[..., Any], tmp_path: Path
) -> None:
    """Found by the model tier (a longer run, 200 steps per example): a zip written through
    the filesystem, a member read, the zip moved to another container by rename, then (once
    its blocks have left the cache, which `forget_bytes` stands for) the member at the new
    path read ENOENT: the kept archive reader fetched from the old place."""
    site = start_site(demo=False)
    fw = site.client()
    fw.add_group(flywheel.Group(GROUP, "Regression"))
    project = fw.get_group(GROUP).add_project(label="P")
    project.add_subject(label="S")
    members = {"a.txt": random.Random(1).randbytes(3000), "b.bin": random.Random(2).randbytes(9)}
    target = ModelDriver(site, tmp_path / "spool", TTL)
    try:
        target.write_file(f"{GROUP}/P/m.zip", zip_bytes(members, compress=False))
        assert target.read_file(f"{GROUP}/P/m.zip.d/a.txt") == members["a.txt"]
        target.rename(f"{GROUP}/P/m.zip", f"{GROUP}/P/S/n.zip")
        target.forget_bytes()
        assert target.read_file(f"{GROUP}/P/S/n.zip.d/a.txt") == members["a.txt"]
    finally:
        target.shutdown()
