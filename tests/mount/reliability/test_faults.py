"""A flaky network between the mount and the site (issue 7, item 1).

`faultproxy.FaultProxy` sits between `fwfs mount` and the sandbox and injects HTTP 5xx,
429 with Retry-After, connection resets (before the answer and in the middle of a body),
bodies cut short, stalls and slow drips. What a user would check:

* `cp -r` of the demo project gives files byte-identical to what the SDK downloads from the
  site directly; a file that cannot be read is reported by cp with EIO, nothing else is
  lost, and nothing is ever wrong bytes; cp ends within the documented bound; the daemon
  stays up and lists afterwards (docs/SEMANTICS.md, tenet 1, "Errors", "Time bounds").
* A body that was cut short is never cached as if it were complete: read again with the
  faults off, through the same mount, the file is right.
* Uploads under faults: `close()` succeeds and the site has the exact bytes, or it fails
  with EIO and the bytes are in the spool's `recovery/` ("Writes", "Nothing is lost").

The read timeout (30 s) has no mount option, so the short profile stalls for less than it
(the client sees a dropped connection after the stall); the long profile also stalls one
request for longer than the read timeout.
"""

from __future__ import annotations

import errno
import os
import random
import re
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from faultproxy import PASS, RETRIABLE, FaultPlan, FaultProxy, Rule
from mountkit import Mount, SiteTree, recovery_entries, sha256, site_bytes, site_files

pytestmark = pytest.mark.timeout(600)

PROJECT = "flywheel/Anxiety Study"
READ_TIMEOUT = 30.0  # ClientConfig.read_timeout; no mount option changes it
# docs/SEMANTICS.md "Time bounds": a read or listing of a dead site fails in about 100 s.
DOCUMENTED_BOUND = 100.0
# The random mix of the `cp -r` rounds: every kind a client must ride out on a read.
READ_MIX = {
    "502": 2,
    "503": 2,
    "429": 1,
    "reset": 2,
    "reset_mid_body": 2,
    "truncate": 2,
    "stall": 1,
    "drip": 2,
}
_STRERROR = {os.strerror(code): errno.errorcode[code] for code in errno.errorcode}


def run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LC_ALL": "C"}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )


@pytest.fixture(scope="module")
def figures(record: Callable[[str, object], None]) -> Iterator[dict[str, Any]]:
    """What every test of the module injected, verified and saw, recorded once at the end."""
    totals: dict[str, Any] = {"injected": Counter(), "bytes": 0, "errors": Counter()}
    yield totals
    record("faults_injected", dict(sorted(totals["injected"].items())))
    record("fault_bytes_verified", totals["bytes"])
    record("fault_errors_seen", dict(sorted(totals["errors"].items())))


@pytest.fixture
def proxy(demo_site: Any, figures: dict[str, Any]) -> Iterator[FaultProxy]:
    """A fault proxy in front of the demo site (passing everything until given a plan)."""
    with FaultProxy(demo_site.url) as p:
        yield p
        figures["injected"].update(p.injected())


def mount_through(
    mount_site: Callable[..., Mount], proxy: FaultProxy, site: Any, **options: Any
) -> Mount:
    """A fresh mount (its own cache) of `site` through the proxy. The mount checks the key
    before it mounts: that goes through untouched, whatever the plan."""
    plan, proxy.plan = proxy.plan, PASS
    try:
        return mount_site(site, key=proxy.api_key(site.api_key), **options)
    finally:
        proxy.plan = plan


def assert_alive_and_listing(mount: Mount, path: Path, expected: set[str]) -> None:
    """The daemon is up and answers a listing (in a subprocess, so a hang fails here)."""
    assert mount.alive, mount.log()[-3000:]
    out = run(["ls", "-1", str(path)], timeout=DOCUMENTED_BOUND)
    assert out.returncode == 0, out.stderr
    assert expected <= set(out.stdout.splitlines())


def shell_unquote(text: str, at: int) -> tuple[str, int]:
    """The name GNU tools quote from `at` on ('…' and $'\\ooo' pieces, as cp prints names
    that are not plain ASCII), and the index after it."""
    out = bytearray()
    while at < len(text):
        if text.startswith("$'", at):
            at += 2
            while text[at] != "'":
                if text[at] == "\\":
                    code = text[at + 1]
                    if code in "01234567":
                        out.append(int(text[at + 1 : at + 4], 8))
                        at += 4
                        continue
                    out += {"n": b"\n", "t": b"\t"}.get(code, code.encode())
                    at += 2
                    continue
                out += text[at].encode()
                at += 1
            at += 1
        elif text.startswith("\\'", at):  # a quote inside a name: '\''
            out += b"'"
            at += 2
        elif text.startswith("'", at):
            end = text.index("'", at + 1)
            out += text[at + 1 : end].encode()
            at = end + 1
        else:
            break
    return out.decode("utf-8", "surrogateescape"), at


def cp_errors(stderr: str, source: Path) -> dict[str, str]:
    """cp's complaints: {path relative to `source`: errno name}."""
    errors: dict[str, str] = {}
    for line in stderr.splitlines():
        start = min((i for i in (line.find("'"), line.find("$'")) if i >= 0), default=-1)
        assert line.startswith("cp: ") and start > 0, f"a cp message that names no path: {line!r}"
        name, end = shell_unquote(line, start)
        error = line[end:].rsplit(": ", 1)[-1]
        path = Path(name)
        assert path == source or source in path.parents, line
        errors[str(path.relative_to(source))] = _STRERROR.get(error, error)
    return errors


def unreadable_picks(tree: SiteTree, rng: random.Random, count: int) -> list[str]:
    """Files of the project whose raw name is unique in it, so that a rule on the name hits
    exactly that file (files of analyses are read by other paths: left out)."""
    names = Counter(p.rsplit("/", 1)[-1] for p in tree.files)
    fit = sorted(
        p
        for p in tree.files
        if names[p.rsplit("/", 1)[-1]] == 1
        and "analyses" not in p.split("/")
        and "(file-" not in p
        and re.fullmatch(r"[A-Za-z0-9_.-]+", p.rsplit("/", 1)[-1])
    )
    return rng.sample(fit, count)


def file_rule(kind: str, name: str, **kw: Any) -> Rule:
    return Rule(kind, method="GET", path="/files/" + re.escape(quote(name, safe="")) + "$", **kw)


# ---- cp -r under a mix of faults ------------------------------------------------------------


def test_cp_r_under_faults_is_exact_or_eio(
    proxy: FaultProxy,
    demo_site: Any,
    mount_site: Callable[..., Mount],
    demo_tree: SiteTree,
    profile: Any,
    figures: dict[str, Any],
    tmp_path: Path,
) -> None:
    tree = demo_tree.under(PROJECT)
    for round_ in range(profile.fault_rounds):
        seed = 7000 + round_
        rng = random.Random(seed)
        # Two files fail for good (500 is final: no retry), so the EIO path is always taken;
        # every other fault is one a client must ride out.
        broken = unreadable_picks(tree, rng, 2)
        rules = [file_rule("500", p.rsplit("/", 1)[-1], times=None) for p in broken]
        if profile.name == "long" and round_ == 0:
            # The first file read stalls past the read timeout: the timeout ends it, a retry
            # reads. (No mount option shortens the read timeout, so only the long profile
            # spends the 30 s; the mix's stalls are shorter and end in a dropped connection.)
            rules.insert(0, Rule("stall", method="GET", ranged=True, seconds=READ_TIMEOUT + 5))
        plan = FaultPlan(
            seed=seed,
            rate=0.3,
            mix=READ_MIX,
            rules=tuple(rules),
            max_per_key=2,
            stall_seconds=2.0,
        )
        proxy.plan = plan
        before = Counter(proxy.injected())
        mount = mount_through(mount_site, proxy, demo_site)
        source = mount / PROJECT
        dest = tmp_path / f"copy-{round_}"
        # A hang fails here: cp must end within the bound (TimeoutExpired fails the test).
        out = run(["cp", "-r", str(source), str(dest)], timeout=DOCUMENTED_BOUND + 60)
        injected = Counter(proxy.injected()) - before
        errors = cp_errors(out.stderr, source)
        figures["errors"].update(errors.values())
        # Exactly the files that could not be read are reported, with EIO...
        assert errors == {p: "EIO" for p in broken}, (out.stderr, injected)
        assert out.returncode != 0
        # ...and whatever cp wrote of them is a prefix of the right bytes (never wrong ones).
        for p in broken:
            if (dest / p).exists():
                got = (dest / p).read_bytes()
                assert tree.files[p].startswith(got), p
        # Every other file is byte-identical to the SDK's download, and nothing else is there.
        copied = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
        assert copied - set(broken) == set(tree.files) - set(broken)
        for p in sorted(copied - set(broken)):
            data = (dest / p).read_bytes()
            assert sha256(data) == sha256(tree.files[p]), p
            figures["bytes"] += len(data)
        dirs = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_dir()}
        assert dirs == tree.dirs
        # The mix did hurt this round (a seed that injects nothing proves nothing).
        assert sum(injected[k] for k in RETRIABLE) >= 5, injected
        assert injected["500"] >= len(broken), injected
        # The daemon is up; with the faults off it lists, and the broken files now read.
        proxy.plan = PASS
        assert_alive_and_listing(mount, source, {"sub-01", "sub-02"})
        for p in broken:
            assert (source / p).read_bytes() == tree.files[p]
        # Each failed read left a log line naming the file and the errno.
        log = mount.log().splitlines()
        for p in broken:
            assert any(f"'/{PROJECT}/{p}'" in line and "(EIO)" in line for line in log), p


# ---- a cut body is never cached -------------------------------------------------------------


@pytest.mark.parametrize("cut", ["truncate", "reset_mid_body"])
def test_a_cut_body_is_never_cached(
    cut: str,
    proxy: FaultProxy,
    demo_site: Any,
    mount_site: Callable[..., Mount],
    demo_tree: SiteTree,
    figures: dict[str, Any],
) -> None:
    tree = demo_tree.under(PROJECT)
    failing, retried = unreadable_picks(tree, random.Random(cut), 2)
    fail_name, retry_name = failing.rsplit("/", 1)[-1], retried.rsplit("/", 1)[-1]
    proxy.plan = FaultPlan(
        rules=(
            # The first ranged read of `failing` is cut, and every later one refused (the
            # kernel asks again after a failed readahead): the read fails, and the short
            # bytes must not stay behind in the cache.
            file_rule(cut, fail_name, ranged=True, times=1),
            file_rule("500", fail_name, ranged=True, skip=1, times=None),
            # The first ranged read of `retried` is cut; its retry succeeds.
            file_rule(cut, retry_name, ranged=True, times=1),
        )
    )
    mount = mount_through(mount_site, proxy, demo_site)
    fd = os.open(mount / PROJECT / failing, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as err:
            os.pread(fd, len(tree.files[failing]) + 1, 0)
        assert err.value.errno == errno.EIO
        figures["errors"]["EIO"] += 1
        # The other file reads right at once: the retry replaced the short body.
        assert (mount / PROJECT / retried).read_bytes() == tree.files[retried]
        injected = proxy.injected()
        assert injected[cut] == 2 and injected["500"] >= 1, injected
        # Faults off: the same handle and a new open read the whole file, exactly.
        proxy.plan = PASS
        assert os.pread(fd, len(tree.files[failing]) + 1, 0) == tree.files[failing]
    finally:
        os.close(fd)
    assert (mount / PROJECT / failing).read_bytes() == tree.files[failing]
    figures["bytes"] += 2 * len(tree.files[failing]) + len(tree.files[retried])
    assert mount.alive


# ---- uploads under faults -------------------------------------------------------------------


def test_uploads_under_faults_arrive_or_are_kept(
    proxy: FaultProxy,
    demo_site: Any,
    mount_site: Callable[..., Mount],
    fw: Any,
    profile: Any,
    unique: Callable[[str], str],
    figures: dict[str, Any],
    request: pytest.FixtureRequest,
) -> None:
    project = fw.lookup(PROJECT)
    subject = project.add_subject(label=unique("faults"))
    # The demo site is shared: other tests compare its whole tree with what they see.
    request.addfinalizer(lambda: fw.delete_subject(subject.id))
    session = subject.add_session(label="ses-01")
    acq = session.add_acquisition(label="uploads")
    mount = mount_through(mount_site, proxy, demo_site)
    target = mount / PROJECT / subject.label / "ses-01" / "uploads"
    assert os.listdir(target) == []
    up = "/files$"
    rules = (
        Rule("503", method="POST", path=up, upload="^once-503", times=1),
        Rule("reset", method="POST", path=up, upload="^once-reset", times=1),
        Rule("truncate", method="POST", path=up, upload="^once-truncate", times=1),
        Rule("503", method="POST", path=up, upload="^always-503", times=None),
        Rule("reset", method="POST", path=up, upload="^always-reset", times=None),
    )
    # The `mix-` files meet a random mix of everything, 500 and stalls included, up to three
    # times in a row: as many as the mount's attempts, so some may fail.
    mix = {"500": 1, "502": 1, "503": 1, "429": 1, "reset": 2, "truncate": 1, "stall": 1}
    proxy.plan = FaultPlan(
        seed=4242,
        rate=0.4,
        mix=mix,
        rules=rules,
        methods=("POST",),
        path=up,
        upload="^mix-",
        max_per_key=3,
        stall_seconds=2.0,
    )
    names = [
        "plain.bin",
        "once-503.bin",
        "once-reset.bin",
        "once-truncate.bin",
        "always-503.bin",
        "always-reset.bin",
    ] + [f"mix-{i}.bin" for i in range(2 * profile.fault_rounds + 4)]
    rng = random.Random(99)
    written: dict[str, bytes] = {}
    outcome: dict[str, int] = {}
    for name in names:
        data = rng.randbytes(rng.randrange(1, 300_000))
        written[name] = data
        fd = os.open(target / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            try:
                os.close(fd)
                outcome[name] = 0
            except OSError as exc:
                outcome[name] = exc.errno or -1
    assert mount.alive, mount.log()[-3000:]
    failed = {n for n, e in outcome.items() if e}
    figures["errors"].update(errno.errorcode.get(e, str(e)) for e in outcome.values() if e)
    # Every failure is EIO (a server error or a dropped connection, after the retries).
    assert {outcome[n] for n in failed} <= {errno.EIO}, outcome
    # The planned ones: a single fault is ridden out, a fault on every attempt is not.
    assert {"always-503.bin", "always-reset.bin"} <= failed
    assert not failed & {"plain.bin", "once-503.bin", "once-reset.bin", "once-truncate.bin"}
    # A close that succeeded: the site has exactly those bytes.
    on_site = site_files(fw, acq.id)
    for name in sorted(set(names) - failed):
        assert name in on_site, name
        assert site_bytes(fw, acq.id, name) == written[name], name
        figures["bytes"] += len(written[name])
    # A close that failed: its bytes are in recovery/, with the name they were for.
    kept = {rec["target"]["name"]: data for rec, data in recovery_entries(mount.spool)}
    assert set(kept) == failed
    for name in sorted(failed):
        assert kept[name] == written[name], name
        assert rec_cid(mount.spool, name) == acq.id
        figures["bytes"] += len(written[name])
    injected = proxy.injected()
    assert injected.get("503", 0) >= 4 and injected.get("reset", 0) >= 4, injected
    # Faults off: the daemon lists the container, with the files that arrived.
    proxy.plan = PASS
    assert_alive_and_listing(mount, target, set(names) - failed)


def rec_cid(spool: Path, name: str) -> str:
    for rec, _ in recovery_entries(spool):
        if rec["target"]["name"] == name:
            return str(rec["target"]["cid"])
    raise AssertionError(f"{name} is not in {spool}/recovery")
