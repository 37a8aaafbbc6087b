"""The reference model (refmachine.py) and its model-tier run (test_model_tier.py).

The model names entries as mountkit does (`entry_names`, the rules of SEMANTICS *Names*),
so tests/mount joins the import path here, as tests/refmodel joins it for the mount run
(tests/mount/reliability/test_reference_model.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

_MOUNT = str(Path(__file__).resolve().parents[1] / "mount")
if _MOUNT not in sys.path:
    sys.path.insert(0, _MOUNT)
