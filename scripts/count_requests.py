"""Count what one command over a fresh mount costs, per sandbox profile.

    .venv/bin/python scripts/count_requests.py [--scale 1000] [--strict] [--data DIR]
        [-- CMD ...]

Starts `fwfs serve --demo --scale N` (plus `--strict`: a real core's behaviour), mounts it
with the default options, runs CMD (default: `ls -lR` of project `Scale N`) with `{mnt}`
replaced by the mount point, and prints the requests it made from the access log, core and
storage apart, with the wall time. `--data` keeps the seeded site for the next run (seeding
1,000 sessions takes a while). docs/SEMANTICS.md's figures come from here.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

PYTHON = sys.executable


def wait_for(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not after {timeout:.0f} s")
        time.sleep(0.05)


def mounted(path: Path) -> bool:
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        return any(line.split()[1] == str(path) for line in f)


def log_lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=1000)
    parser.add_argument("--strict", action="store_true")
    parser.add_argument("--data", type=Path)
    parser.add_argument("cmd", nargs="*")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fwfs-count-"))
    data = args.data or work / "data"
    ready, access = work / "ready.json", work / "access.log"
    serve = [PYTHON, "-m", "fwfs", "serve", "--demo", "--scale", str(args.scale)]
    serve += ["--port", "0", "--data", str(data), "--ready-file", str(ready)]
    serve += ["--access-log", str(access)] + (["--strict"] if args.strict else [])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FW_", "FWFS_"))}
    site = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    mnt = work / "mnt"
    mnt.mkdir()
    mount: subprocess.Popen[bytes] | None = None
    try:
        wait_for(ready.exists, "fwfs serve ready", 1800)
        info = json.loads(ready.read_text(encoding="utf-8"))
        env["FWFS_API_KEY"] = info["api_key"]
        if info.get("ca_cert"):
            # The private CA through the OS trust store, as a company CA would be.
            system = ssl.get_default_verify_paths().openssl_cafile
            bundle = work / "trust.pem"
            bundle.write_text(Path(system).read_text() + "\n" + Path(info["ca_cert"]).read_text())
            env["SSL_CERT_FILE"] = str(bundle)
            env.pop("REQUESTS_CA_BUNDLE", None)
            env.pop("CURL_CA_BUNDLE", None)
        mount_argv = [PYTHON, "-m", "fwfs", "mount", str(mnt), "-f"]
        mount_argv += ["--log-file", str(work / "fwfs.log")]
        mount = subprocess.Popen(mount_argv, env=env, stdout=subprocess.DEVNULL)
        wait_for(lambda: mounted(mnt), "fwfs mount", 60)
        time.sleep(0.5)  # the mount's own start-up requests reach the log
        mark = len(log_lines(access))
        cmd = args.cmd or ["ls", "-lR", f"{{mnt}}/flywheel/Scale {args.scale}"]
        start = time.monotonic()
        out = subprocess.run(
            [c.replace("{mnt}", str(mnt)) for c in cmd], capture_output=True, check=False
        )
        seconds = time.monotonic() - start
        time.sleep(0.5)  # the last requests' lines
        entries = log_lines(access)[mark:]
        by_listener = Counter(str(e.get("listener", "core")) for e in entries)
        # Requests alike but for ids and names: the first three path segments.
        by_kind = Counter(
            f"{e.get('listener', 'core')} {e['method']} " + "/".join(str(e["path"]).split("/")[:3])
            for e in entries
        )
        print(
            json.dumps(
                {
                    "profile": "strict" if args.strict else "default",
                    "exit": out.returncode,
                    "output_lines": out.stdout.count(b"\n"),
                    "seconds": round(seconds, 2),
                    "requests": len(entries),
                    "by_listener": dict(by_listener),
                    "by_kind": dict(by_kind),
                },
                indent=1,
            )
        )
    finally:
        if mount is not None:
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
            mount.wait(timeout=30)
        site.terminate()
        site.wait(timeout=30)


if __name__ == "__main__":
    main()
