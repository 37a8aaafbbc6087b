"""`fwfs demo`: the demo sandbox site and a mount of it, in one foreground process."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from fwfs.config import ClientConfig, TrustConfig
from fwfs.inprocess import connect, mount_config
from fwfs.wiring import SignedIn, mountpoint_problem, serve, spool_problem

DEMO_DISK_CACHE = 1 << 30


def run_demo(args: argparse.Namespace) -> int:
    """The demo site and a mount of it, in the foreground; Ctrl-C ends both."""
    # The CLI has checked the sandbox extra before this import.
    from fwfs.sandbox.server import Sandbox, ServeOptions

    mountpoint = (args.mountpoint or Path("flywheel")).expanduser().absolute()
    mountpoint.mkdir(parents=True, exist_ok=True)
    problem = mountpoint_problem(mountpoint)
    if problem:
        print(f"fwfs: {problem}", file=sys.stderr)
        return 1
    site = Sandbox(ServeOptions.from_args(args, demo=True))
    info = site.announce()
    site.start()
    try:
        # A demo site with its own CA (`--private-ca`, `--strict`) is trusted by that CA.
        ca = info.get("ca_cert")
        trust = TrustConfig(ca_file=ca, ca_file_source="the demo site") if ca else True
        client_config = ClientConfig.from_api_key(info["api_key"], verify=trust)

        def ready() -> None:
            print(f"fwfs demo: site {info['url']} mounted at {mountpoint}", flush=True)
            print(f"  ls {mountpoint}/flywheel/'Anxiety Study'", flush=True)
            print(f"  SDK key: {info['api_key']}", flush=True)
            print("  Ctrl-C unmounts and stops the site.", flush=True)

        facts, problem = connect(client_config)
        # The demo takes only some of the mount's flags; the others have their defaults
        # (so the demo mount is writable).
        config = mount_config(args, client_config.base_url, mountpoint, facts.audit_trail)
        # The demo shows the disk cache (off by default for `fwfs mount`: patient data),
        # in the site's own directory: its data is the demo's, and goes with it.
        config = dataclasses.replace(
            config, disk_cache=DEMO_DISK_CACHE, cache_dir=site.store.data_dir / "cache"
        )
        problem = problem or spool_problem(config)
        if problem:
            print(f"fwfs: {problem}", file=sys.stderr)
            return 1
        signed_in = SignedIn(client_config, facts.user_id, facts.site_config)
        return serve(signed_in, config, mountpoint, {}, ready)
    finally:
        site.stop()
