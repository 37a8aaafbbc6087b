"""`flywheel://` credentials: the key never travels in a pickle, a worker process reads
with its own (FWFS_API_KEY or user.json), and a missing, wrong or misplaced key is a
PermissionError that says what is wrong without quoting the key, never a hang."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import fsspec  # type: ignore[import-untyped]
import pytest
from remotekit import DEMO_PROJECT, T1W, options_of

from fwfs.remote import FlywheelFileSystem
from fwfs.testing.sites import clean_env

pytestmark = pytest.mark.timeout(120)

CSV = f"{DEMO_PROJECT}/participants.csv"
# A worker: reads a pickled filesystem (or open file) from stdin and prints what it read.
WORKER = """
import pickle, sys
thing = pickle.loads(sys.stdin.buffer.read())
try:
    data = thing.cat_file(sys.argv[1]) if sys.argv[1] else thing.read()
except Exception as err:
    print(f"{type(err).__name__}: {err}", file=sys.stderr)
    sys.exit(3)
sys.stdout.buffer.write(data)
"""


def worker(
    site: Any, payload: bytes, home: Path, path: str = "", key: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Runs WORKER in a process with no key but `key` (as FWFS_API_KEY) and `home`."""
    env = site.subprocess_env(clean_env(("FW_", "FWFS_", "FLYWHEEL_")))
    env["HOME"] = str(home)
    if key is not None:
        env["FWFS_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-c", WORKER, path],
        input=payload,
        env=env,
        capture_output=True,
        timeout=60,
    )


def test_a_pickle_holds_no_key(site: Any) -> None:
    fsys = FlywheelFileSystem(**options_of(site))
    assert fsys.ls(DEMO_PROJECT)  # the model is built, the client holds the key
    opened = fsspec.open(f"flywheel://{CSV}", **options_of(site))
    secret = site.secret.encode()
    for thing in (fsys, opened, fsys.open(CSV)):
        assert secret not in pickle.dumps(thing)
    for text in (repr(fsys), str(fsys.storage_options), fsys.to_json(), repr(opened)):
        assert site.secret not in text
    assert "api_key" not in fsys.storage_options
    assert fsys.storage_options["site"] == site.api_url


def test_an_unpickled_instance_reads_with_the_workers_key(site: Any, tmp_path: Path) -> None:
    fsys = FlywheelFileSystem(**options_of(site))
    expected = fsys.cat_file(CSV)
    done = worker(site, pickle.dumps(fsys), tmp_path, CSV, key=site.api_key)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == expected
    # An open file, as Dask hands one to a task: reopened where it was.
    with fsys.open(f"{T1W}/T1w.nii.gz") as f:
        whole = f.read()
        f.seek(100)
        done = worker(site, pickle.dumps(f), tmp_path, key=site.api_key)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == whole[100:]


def test_a_worker_finds_the_key_in_user_json(site: Any, tmp_path: Path) -> None:
    config = tmp_path / ".config" / "flywheel"
    config.mkdir(parents=True)
    (config / "user.json").write_text(json.dumps({"key": site.api_key}))
    fsys = FlywheelFileSystem(**options_of(site))
    done = worker(site, pickle.dumps(fsys), tmp_path, CSV)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == fsys.cat_file(CSV)


def test_a_worker_without_a_key_is_told_what_is_missing(site: Any, tmp_path: Path) -> None:
    fsys = FlywheelFileSystem(**options_of(site))
    done = worker(site, pickle.dumps(fsys), tmp_path, CSV)
    assert done.returncode == 3
    error = done.stderr.decode()
    assert error.startswith("PermissionError: ")
    assert "FWFS_API_KEY" in error and str(tmp_path / ".config/flywheel/user.json") in error


def test_a_worker_key_of_another_site_is_refused(site: Any, tmp_path: Path) -> None:
    fsys = FlywheelFileSystem(**options_of(site))
    elsewhere = "flywheel.example.org:" + site.secret
    done = worker(site, pickle.dumps(fsys), tmp_path, CSV, key=elsewhere)
    assert done.returncode == 3
    error = done.stderr.decode()
    assert error.startswith("PermissionError: ") and site.api_url in error
    assert site.secret not in error


def test_a_wrong_key_is_permission_error_without_the_key(site: Any) -> None:
    wrong = site.api_key.rsplit(":", 1)[0] + ":not-a-valid-secret-at-all"
    fsys = FlywheelFileSystem(**options_of(site, api_key=wrong))
    with pytest.raises(PermissionError) as err:
        fsys.ls(DEMO_PROJECT)
    assert "not-a-valid-secret" not in str(err.value)
    assert site.api_url in str(err.value)
    with pytest.raises(PermissionError) as malformed:
        FlywheelFileSystem(api_key="only-a-secret-no-host")
    assert "only-a-secret" not in str(malformed.value)


def test_site_names_the_keys_host_in_any_spelling(site: Any) -> None:
    for spelling in (site.api_url, site.url, f"{site.url}/api/"):
        fsys = FlywheelFileSystem(**options_of(site, site=spelling))
        assert fsys.ls(DEMO_PROJECT)
    with pytest.raises(PermissionError) as err:
        FlywheelFileSystem(**options_of(site, site="https://flywheel.example.org"))
    assert "flywheel.example.org" in str(err.value) and site.secret not in str(err.value)


def test_a_site_that_does_not_answer_fails_the_first_call(tmp_path: Path) -> None:
    """A key whose site refuses connections: an OSError naming the site, after the mount's
    budget for its checks, not a hang."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fsys = FlywheelFileSystem(
        api_key=f"127.0.0.1:{port}:__force_insecure:nobody-listens", skip_instance_cache=True
    )
    with pytest.raises(OSError) as err:
        fsys.ls("")
    assert f"127.0.0.1:{port}" in str(err.value) and "nobody-listens" not in str(err.value)
