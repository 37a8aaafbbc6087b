"""What the `flywheel://` tests share besides fixtures (conftest.py): paths of the demo
site, storage options, the scratch tree. A module of its own name: `from conftest import`
finds whichever test directory's conftest.py was imported first in a full run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fwfs.remote import FlywheelFileSystem

DEMO_PROJECT = "flywheel/Anxiety Study"
T1W = f"{DEMO_PROJECT}/sub-01/ses-baseline/T1w"

MakeFs = Callable[..., FlywheelFileSystem]


def options_of(site: Any, /, **options: Any) -> dict[str, Any]:
    """Storage options for `site` as Ada: her key, and the site's CA when it has one."""
    out: dict[str, Any] = {"api_key": site.api_key, "skip_instance_cache": True}
    if site.ca_cert is not None:
        out["verify"] = str(site.ca_cert)
    return {**out, **options}


@dataclass
class Scratch:
    """A group of the test's own holding project "P" / "sub-01" / "ses-01" / "acq-01"
    (SDK objects); `path` is the project's `flywheel://` path."""

    group: str
    project: Any
    acquisition: Any

    @property
    def path(self) -> str:
        return f"{self.group}/P"

    @property
    def acq_path(self) -> str:
        return f"{self.path}/sub-01/ses-01/acq-01"
