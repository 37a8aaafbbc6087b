"""Issue 7's reliability suite: faults, a reference model, open flags, bad input, a soak and
security, all on real mounts of real sandbox sites (the fixtures of tests/mount/conftest.py).

Two profiles: the short one runs in `scripts/test` (CI); `FWFS_RELIABILITY=long` runs the
same tests with more examples, more faults and a longer soak. Each test takes its sizes
from the `profile` fixture, never from constants of its own, so the switch reaches all.
Figures a test measures go to `record(name, value)`: they are written to
`$FWFS_RELIABILITY_REPORT` (JSON lines) when set, for docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Profile:
    name: str
    state_machine_examples: int  # Hypothesis examples of the reference model
    state_machine_steps: int  # steps per example
    fault_rounds: int  # full `cp -r` passes under the fault mix
    soak_seconds: float  # length of the bounded soak
    soak_workers: int  # processes reading, listing and uploading at once


SHORT = Profile("short", 8, 25, 1, 20.0, 4)
LONG = Profile("long", 60, 60, 5, 240.0, 8)


@pytest.fixture(scope="session")
def profile() -> Profile:
    return LONG if os.environ.get("FWFS_RELIABILITY") == "long" else SHORT


@pytest.fixture(scope="session")
def record() -> Callable[[str, object], None]:
    path = os.environ.get("FWFS_RELIABILITY_REPORT")

    def write(name: str, value: object) -> None:
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps({"figure": name, "value": value}) + "\n")

    return write
