"""Issue 7, item 3: every open(2) flag combination on real mounts, as
docs/RELIABILITY-open-flags.md says (its rule and table: open_flags.py).

One site and one mount per mode, one file per cell: each row opens an existing file of an
acquisition (version 1) and a free name beside it, reads and writes as the row says, and
closes. Then what the mount shows, and, once the mount is gone (every upload done), what the
site holds, as the SDK sees it, are checked against the rule for all cells at once: a
mismatch lists every cell that went wrong, not only the first.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flywheel
import open_flags
import pytest
from mountkit import Mount, changes, quiet_mark, requests_since, site_files, uploads, wait_for
from open_flags import MOUNTS, ORIGINAL, PAYLOAD, TARGETS, Case, Outcome

pytestmark = pytest.mark.timeout(120)

ACQ = "g/P/sub/ses/acq"


def test_the_committed_table_is_the_generators_output() -> None:
    assert open_flags.DOC.read_text(encoding="utf-8") == open_flags.render(), (
        "docs/RELIABILITY-open-flags.md is stale: run tests/mount/reliability/open_flags.py --write"
    )


def test_the_table_covers_every_combination() -> None:
    rows = list(open_flags.cases())
    flags = {(c.access, c.extras) for c in rows}
    assert len(flags) == 3 * 2**4  # three access modes, every subset of four flags
    # Rows whose access mode can write come twice: writing nothing, and writing.
    assert len(rows) == 16 + 2 * 32


def name_of(index: int, target: str) -> str:
    return f"{index:02d}-{target}.txt"


def attempt(path: Path, case: Case) -> tuple[str | None, bytes | None]:
    """Open as the row says; read, write and close as it says. (errno name, bytes read)."""
    try:
        fd = os.open(path, case.flags, 0o644)
    except OSError as err:
        assert err.errno is not None
        return errno.errorcode[err.errno], None
    seen = None
    try:
        if case.readable:
            seen = os.pread(fd, 4096, 0)
        if case.writes:
            assert os.write(fd, PAYLOAD) == len(PAYLOAD)
    finally:
        os.close(fd)
    return None, seen


@pytest.mark.parametrize("mode", MOUNTS)
def test_every_open_flag_combination_does_what_the_table_says(
    mode: str,
    start_site: Callable[..., Any],
    mount_site: Callable[..., Mount],
    record: Callable[[str, object], None],
) -> None:
    site = start_site(demo=False)
    fw = site.client()
    fw.add_group(flywheel.Group("g", "Open flags"))
    project = fw.get_group("g").add_project(label="P")
    acq = project.add_subject(label="sub").add_session(label="ses").add_acquisition(label="acq")
    rows = list(open_flags.cases())
    for i in range(len(rows)):
        acq.upload_file(flywheel.FileSpec(name_of(i, "existing"), ORIGINAL))

    mount = mount_site(site, read_only=mode == "read-only")
    folder = mount / ACQ
    assert len(os.listdir(folder)) == len(rows)
    mark = quiet_mark(site)
    expected: dict[str, Outcome] = {}
    wrong: list[str] = []
    for i, case in enumerate(rows):
        for target in TARGETS:
            name = name_of(i, target)
            want = open_flags.expect(case, target, mode)
            expected[name] = want
            error, seen = attempt(folder / name, case)
            where = f"{case.label.replace(chr(92), '')} ({case.then}) on {target} file"
            if error != want.error:
                wrong.append(f"{where}: open gave {error or 'success'}, not {want.cell()}")
            elif case.readable and error is None and seen != want.reads:
                wrong.append(f"{where}: a read after the open saw {seen!r}")

    # What a program sees on the mount now.
    for name, want in expected.items():
        body = open_flags.site_bytes(want)
        if body is None:
            if (folder / name).exists():
                wrong.append(f"{name}: exists on the mount after a failed open")
        elif (folder / name).read_bytes() != body:
            wrong.append(f"{name}: the mount shows {(folder / name).read_bytes()!r}, not {body!r}")
    assert not wrong, f"{len(wrong)} cells wrong on a {mode} mount:\n" + "\n".join(wrong)

    # Empty new files are uploaded at their release, which follows close(): wait for them,
    # then unmount, which waits for whatever upload still runs.
    created = {n for n, w in expected.items() if w.site == "new file"}
    wait_for(lambda: created <= set(site_files(fw, acq.id)), what="the new files on the site")
    assert not mount.unmount()

    # What the site holds: every name, version and byte, and nothing else.
    files = site_files(fw, acq.id)
    on_site = {n for n, w in expected.items() if w.site != "nothing"}
    assert set(files) == on_site
    for name in sorted(on_site):
        want = expected[name]
        data = fw.download_file_from_container_as_data(acq.id, name)
        if (files[name].version, data) != (
            open_flags.site_version(want),
            open_flags.site_bytes(want),
        ):
            wrong.append(
                f"{name}: the site holds version {files[name].version} {data!r}, not {want.cell()}"
            )
    assert not wrong, f"{len(wrong)} cells wrong on the site ({mode}):\n" + "\n".join(wrong)
    log = requests_since(site, mark)
    changed = sum(w.site in ("new file", "new version") for w in expected.values())
    # One upload for each new file or version, none for anything else.
    assert len(uploads(log)) == changed
    if mode == "read-only":
        assert changes(log) == []
    assert "Traceback" not in mount.log(), mount.log()[-4000:]
    record(f"open flags: combinations tested on a {mode} mount", len(expected))
    record(
        f"open flags: outcomes on a {mode} mount",
        {
            k: sum((w.error or w.site) == k for w in expected.values())
            for k in sorted({w.error or w.site for w in expected.values()})
        },
    )
