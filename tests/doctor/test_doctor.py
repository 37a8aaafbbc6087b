"""`fwfs doctor` against real sandboxes (issue 11, item 4): the default profile, `--strict`
(with its private CA trusted through the OS store, as a user's machine would), a project-only
member, and sites it must refuse to call fine: an untrusted CA, a refused key, a dead site.

Each run is the real command in a subprocess, as a user types it. What every run must
satisfy, whatever the site: the key's secret is never printed, no request writes, the
requests stay within budget, and the output carries no file names (they can be PHI).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.timeout(120)

LINE = re.compile(r"^(ok|note|warn|BLOCKER)\s+(\S+)\s+(.*)$")
# Names of demo files a report must not leak.
DEMO_NAMES = ("T1w.dicom.zip", "T1w.nii.gz", "README", ".dcm")


@dataclass
class Run:
    code: int
    out: str
    err: str

    def findings(self, topic: str) -> list[tuple[str, str]]:
        found = []
        for line in self.out.splitlines():
            match = LINE.match(line)
            if match and match[2] == topic:
                found.append((match[1], match[3]))
        return found

    def has(self, topic: str, level: str, text: str) -> bool:
        return any(lv == level and text in t for lv, t in self.findings(topic))

    @property
    def requests(self) -> int:
        match = re.search(r"^requests: (\d+), time", self.out, re.M)
        assert match, self.out
        return int(match[1])


def doctor(key: str, env: dict[str, str] | None = None, timeout: float = 100) -> Run:
    base = {k: v for k, v in (env or dict(os.environ)).items() if not k.startswith("FW")}
    proc = subprocess.run(
        [sys.executable, "-m", "fwfs", "doctor"],
        env={**base, "FWFS_API_KEY": key, "HOME": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_safe(run: Run, site: Any, key: str, mark: int | None = None) -> None:
    secret = key.rsplit(":", 1)[-1]
    assert secret not in run.out + run.err
    assert "sig=" not in run.out and "exp=" not in run.out  # no signed URL
    for name in DEMO_NAMES:
        assert name not in run.out, name
    assert "---- fwfs doctor summary" in run.out and "---- end of summary ----" in run.out
    if mark is not None:
        log = site.requests_since(mark)
        writes = [
            e for e in log if e["method"] not in ("GET", "HEAD") and e["path"] != "/api/resolve"
        ]
        assert writes == [], writes
        core = [e for e in log if e.get("listener", "core") == "core"]
        assert len(core) == run.requests <= 40, (len(core), run.requests)


def test_the_default_sandbox_is_fine_as_it_is(demo_site: Any) -> None:
    mark = demo_site.quiet_mark()
    run = doctor(demo_site.api_key)
    assert run.code == 0, run.out + run.err
    assert run.has("tls", "note", "plain HTTP")
    assert run.has("user", "ok", "user_id is given")
    assert run.has("paging", "ok", "limit=1000 is accepted")
    assert run.has("resolver", "ok", "subjects are served with and without")
    assert run.has("resolver", "ok", "embed files, info and tags")
    assert run.has("download", "ok", "served by the API host")
    assert run.has("range", "ok", "HTTP 206")
    assert run.has("zip", "ok", "?info=true")
    assert run.has("inputs", "ok", "on files/ as well")
    assert run.has("delete", "ok", "no audit trail")
    assert "BLOCKER" not in run.out
    assert_safe(run, demo_site, demo_site.api_key, mark)


def test_the_strict_sandbox_shows_each_real_core_behaviour(strict_site: Any) -> None:
    mark = strict_site.quiet_mark()
    run = doctor(strict_site.api_key, strict_site.subprocess_env())
    assert run.code == 0, run.out + run.err
    assert run.has("tls", "ok", "verified")
    assert run.has("paging", "note", "limit=1000 is refused (HTTP 422, at most 500)")
    assert run.has("resolver", "note", "subjects are gated")
    assert run.has("resolver", "note", "without files/info/tags")
    storage = urlsplit(strict_site.storage_url).netloc
    assert run.has("download", "note", f"redirect (HTTP 302) to {storage}")
    assert re.search(r"signed URLs valid (59|60) s", run.out), run.out
    assert run.has("range", "ok", "HTTP 206")
    zip_line = run.findings("zip")
    assert zip_line and re.search(r"took ([2-9]|\d\d)\.\d s", zip_line[0][1]), zip_line
    assert run.has("inputs", "ok", "files/ serves outputs only")
    assert run.has("delete", "note", "--delete-reason")
    assert "features: audit_trail" in run.out
    assert_safe(run, strict_site, strict_site.api_key, mark)


def test_a_project_only_member_is_told_the_group_is_shown_anyway(strict_site: Any) -> None:
    key = strict_site.project_member_api_key
    run = doctor(key, strict_site.subprocess_env())
    assert run.code == 0, run.out + run.err
    assert run.has("groups", "note", "1 group(s) holding your projects are not in /groups")
    assert_safe(run, strict_site, key)


def test_an_untrusted_certificate_blocks_with_advice(strict_site: Any) -> None:
    # No private CA in the trust store: what a user behind a TLS-inspecting proxy meets.
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    run = doctor(strict_site.api_key, env)
    assert run.code == 1, run.out + run.err
    (finding,) = run.findings("tls")
    assert finding[0] == "BLOCKER" and "FW_SSL_CERT_FILE" in finding[1]
    assert "BLOCKED" in run.out
    assert_safe(run, strict_site, strict_site.api_key)


def test_a_refused_key_blocks(demo_site: Any) -> None:
    key = demo_site.api_key.rsplit(":", 1)[0] + ":notTheRightSecret0123456789"
    run = doctor(key)
    assert run.code == 1, run.out + run.err
    assert run.has("key", "BLOCKER", "refused the API key (HTTP 401)")
    assert_safe(run, demo_site, key)


def test_a_dead_site_blocks(demo_site: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the doctor runs
    key = f"127.0.0.1:{port}:__force_insecure:{demo_site.secret}"
    run = doctor(key, timeout=60)
    assert run.code == 1, run.out + run.err
    assert run.has("site", "BLOCKER", "cannot be reached")
    assert demo_site.secret not in run.out + run.err


def test_no_key_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FW", "FLYWHEEL"))}
    proc = subprocess.run(
        [sys.executable, "-m", "fwfs", "doctor"],
        env={**env, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "no Flywheel API key" in proc.stdout


def test_an_old_core_is_told_user_permissions_are_unknown(start_site: Any) -> None:
    site = start_site(old_core=True)
    run = doctor(site.api_key)
    assert run.code == 0, run.out + run.err
    assert run.has("user", "warn", "no user_id")
    assert_safe(run, site, site.api_key)
