"""The SDK guide's examples (test_sdk_guide.py) again, against a site with the real-core
behaviours the official SDK meets unchanged: every flag of `--strict` but `--gate-subjects`.

`--gate-subjects` is left out on purpose: flywheel-sdk 23 sends no `subject-container`
feature, so on a core that gates subjects `fw.lookup("group/project/sub-01/...")` fails, on
the sandbox as on such a real core (see test_strict.py for that behaviour itself).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import test_sdk_guide
from test_sdk_guide import *  # noqa: F403 (the guide's tests, collected here again)

# The guide's TLS test starts a site of its own: nothing new to learn from it here.
globals().pop("test_fw_ssl_cert_file")

STRICT_BUT_SUBJECTS = {
    "trim_resolve": True,
    "trim_list_info": True,
    "strict_permissions": True,
    "redirect_downloads": True,
    "default_page_limit": 100,
    "max_limit": 500,
    "analysis_io_split": True,
    "audit_trail": True,
    "info_delay": 2.0,
    "refuse_encoded_slash": True,
    "private_ca": True,
}
assert test_sdk_guide  # the module is imported for its tests


@pytest.fixture(scope="module")
def demo_site(start_shared_site: Any) -> Iterator[Any]:
    site = start_shared_site(**STRICT_BUT_SUBJECTS)
    # The guide builds its own clients (flywheel.Client(key)): the SDK trusts the site's CA
    # through the OS trust store, SSL_CERT_FILE, as a site's company CA would be.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSL_CERT_FILE", str(site.trust_bundle()))
        yield site
    site.stop()


@pytest.fixture(scope="module")
def fw(demo_site: Any) -> Any:
    return demo_site.client()


@pytest.fixture(scope="module")
def fw_readonly(demo_site: Any) -> Any:
    return demo_site.client(readonly=True)


def test_the_guide_met_the_real_core_behaviours(demo_site: Any) -> None:
    """Runs last: the examples above really went through storage redirects and HTTPS."""
    log = demo_site.access_log()
    assert demo_site.url.startswith("https://")
    assert any(e["listener"] == "core" and e["status"] == 302 for e in log)
    assert any(e["listener"] == "storage" and e["status"] in (200, 206) for e in log)
