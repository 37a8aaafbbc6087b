"""TLS trust of `fwfs mount` (D1): a site whose CA is installed only in the OS trust store
(here: a bundle of the system roots plus the CA, named by SSL_CERT_FILE, as OpenSSL reads
it), not in certifi and without FW_SSL_CERT_FILE, mounts; without the CA the mount is
refused with a message that names the trust used and how to add a CA."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mountkit import is_mounted

pytestmark = pytest.mark.timeout(120)


def fwfs_run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m fwfs ...` with exactly ``env`` on top of PATH: no REQUESTS_CA_BUNDLE or
    FW_SSL_CERT_FILE of this machine's decides the trust."""
    return subprocess.run(
        [sys.executable, "-m", "fwfs", *args],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **env},
        timeout=60,
        check=False,
    )


def test_a_ca_only_in_the_os_store_mounts_and_its_absence_is_explained(
    start_site: Callable[..., Any], tmp_path: Path
) -> None:
    site = start_site(private_ca=True)
    assert site.api_url.startswith("https://") and site.trust_bundle() is not None
    mp = tmp_path / "mnt"
    mp.mkdir()
    env = {"HOME": str(tmp_path), "FWFS_API_KEY": site.readonly_api_key}
    # The machine's own store and certifi, neither holding the site's CA.
    refused = fwfs_run(["mount", str(mp), "--log-file", str(tmp_path / "refused.log")], env)
    assert refused.returncode != 0 and not is_mounted(mp)
    message = refused.stderr
    assert "certificate" in message.lower(), message
    assert "OS trust store" in message and "FW_SSL_CERT_FILE" in message, message
    assert site.secret_of(site.readonly_api_key) not in message + refused.stdout
    trusted = {**env, **site.trust_env()}
    mounted = fwfs_run(["mount", str(mp), "--read-only"], trusted)
    assert mounted.returncode == 0, mounted.stderr
    try:
        assert is_mounted(mp)
        assert os.listdir(mp), "the demo's groups should be listed"
    finally:
        fwfs_run(["unmount", str(mp)], trusted)
    assert not is_mounted(mp)
