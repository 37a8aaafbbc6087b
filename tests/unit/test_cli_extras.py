"""`fwfs serve` and `fwfs demo` without the sandbox extra: one line naming it, exit 1, no
traceback (a user who installed only the mount should learn what to install)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

# The process hides one module, as if the extra were not installed, then runs the CLI.
HIDE_AND_RUN = (
    "import sys; sys.modules[sys.argv[1]] = None; "
    "from fwfs.cli import main; sys.exit(main(sys.argv[2:]))"
)


def run(hidden: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", HIDE_AND_RUN, hidden, *argv],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


@pytest.mark.parametrize("hidden", ["pydicom", "nibabel", "python_multipart"])
def test_demo_without_the_extra_names_it_and_exits_1(hidden: str, tmp_path: Path) -> None:
    out = run(hidden, "demo", "--no-mount", "--data", str(tmp_path / "data"))
    assert out.returncode == 1, out.stderr
    assert f"missing: {hidden}" in out.stderr
    assert "pip install 'fwfs[sandbox]'" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "data").exists()  # nothing started


def test_serve_without_demo_data_does_not_need_the_imaging_libraries(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HIDE_AND_RUN,
            "pydicom",
            "serve",
            "--port",
            "0",
            "--data",
            str(tmp_path / "data"),
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        import time

        deadline = time.monotonic() + 30
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.stderr is not None
        assert ready.exists(), proc.stderr.read() if proc.poll() is not None else "not ready"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_strict_serve_without_trustme_names_it(tmp_path: Path) -> None:
    out = run("trustme", "serve", "--strict", "--data", str(tmp_path / "data"))
    assert out.returncode == 1, out.stderr
    assert "missing: trustme" in out.stderr
    assert "Traceback" not in out.stderr
