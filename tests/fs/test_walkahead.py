"""Walk read-ahead (fwfs/fs/walkahead.py), the filesystem model against the demo sandbox.

What a user would check, in the site's access log: a program that reads a directory's files
one after another finds the later ones already asked for (their GETs are in the log before
it opens them) and every file crosses the wire once; the bytes it reads are the site's;
reading one file, or files out of order, fetches nothing else; a walk that only lists
(`ls -R`, `find`) fetches no file at all; a walk that reads files has the next directory's
files fetched when it lists it; a fetch ahead that fails is seen by nobody, and the
program's own read asks again.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import flywheel
import pytest
from writekit import Scratch, read_all

from fwfs.errors import FwfsError
from fwfs.fs import FlywheelFS

pytestmark = pytest.mark.timeout(120)

KiB = 1 << 10


@pytest.fixture
def tree(scratch_tree: Scratch) -> Scratch:
    """The module's scratch group (tests/fs/conftest.py): project / subject / session."""
    return scratch_tree


def fill(tree: Scratch, label: str, sizes: list[int]) -> tuple[Scratch, dict[str, bytes]]:
    """An acquisition `label` holding files f00, f01, ... of these sizes (random bytes)."""
    scratch = tree.with_acquisition(label)
    data = {f"f{i:02d}.bin": os.urandom(size) for i, size in enumerate(sizes)}
    for name, body in data.items():
        scratch.fw.upload_file_to_container(scratch.acq.id, flywheel.FileSpec(name, body))
    return scratch, data


@pytest.fixture
def model(demo_site: Any, new_model: Callable[..., FlywheelFS]) -> FlywheelFS:
    return new_model(demo_site.api_key, metadata_ttl=300)


def file_gets(entries: list[dict[str, Any]], acq_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in entries
        if e["method"] == "GET" and e["path"].startswith(f"/api/acquisitions/{acq_id}/files/")
    ]


def fetched(site: Any, mark: int, acq_id: str) -> Counter[str]:
    """File name -> GETs of it since `mark`."""
    gets = file_gets(site.requests_since(mark), acq_id)
    return Counter(e["path"].rsplit("/", 1)[1] for e in gets)


def wait_fetched(site: Any, mark: int, acq_id: str, names: list[str]) -> Counter[str]:
    """The GETs since `mark` once every one of `names` has one (failing after 20 s)."""
    deadline = time.monotonic() + 20
    while True:
        got = fetched(site, mark, acq_id)
        if all(got[n] for n in names) or time.monotonic() > deadline:
            assert sorted(n for n in names if not got[n]) == [], "never fetched ahead"
            return got


def read(fs: FlywheelFS, path: str, length: int | None = None) -> bytes:
    fh = fs.open(path, os.O_RDONLY).fh
    try:
        return read_all(fs, fh) if length is None else fs.read(fh, 0, length)
    finally:
        fs.release(fh)


def test_files_read_in_order_are_fetched_ahead_once(
    demo_site: Any, tree: Scratch, model: FlywheelFS, unique: Callable[[str], str]
) -> None:
    scratch, data = fill(tree, unique("walk"), [(100 + 30 * i) * KiB for i in range(10)])
    names = list(data)
    listed = [name for name, _ in model.readdir(scratch.acq_path)]
    assert listed == names  # the listing's order is the upload order here
    mark = demo_site.quiet_mark()
    for name in names[:2]:
        assert read(model, f"{scratch.acq_path}/{name}") == data[name]
    # The two reads in a row are a walk: the other eight are asked for before they are
    # opened, and in parallel (not one round trip after another).
    ahead = wait_fetched(demo_site, mark, scratch.acq.id, names[2:])
    for name in names[2:]:
        assert read(model, f"{scratch.acq_path}/{name}") == data[name]
    got = fetched(demo_site, mark, scratch.acq.id)
    assert got == {name: 1 for name in names}, "a file crossed the wire twice"
    assert ahead == got
    # Whole files (they are small), in one GET each.
    assert model.walk.fetched_files == 8
    assert model.walk.fetched_bytes == sum(len(data[n]) for n in names[2:])


def test_header_probes_fetch_only_the_heads_ahead(
    demo_site: Any, tree: Scratch, model: FlywheelFS, unique: Callable[[str], str]
) -> None:
    """Files larger than `file_bytes` (1 MiB): as much of each as the program read of the
    previous one, in blocks, as a loop over NIfTI headers reads them."""
    scratch, data = fill(tree, unique("heads"), [1536 * KiB] * 6)
    names = list(data)
    mark = demo_site.quiet_mark()
    for name in names[:2]:
        assert read(model, f"{scratch.acq_path}/{name}", 348) == data[name][:348]
    wait_fetched(demo_site, mark, scratch.acq.id, names[2:])
    for name in names[2:]:
        assert read(model, f"{scratch.acq_path}/{name}", 348) == data[name][:348]
    gets = file_gets(demo_site.requests_since(mark), scratch.acq.id)
    assert len(gets) == len(names)
    assert {e["range"] for e in gets} == {f"bytes=0-{128 * KiB - 1}"}


def test_one_file_or_files_out_of_order_fetch_nothing_else(
    demo_site: Any, tree: Scratch, model: FlywheelFS, unique: Callable[[str], str]
) -> None:
    scratch, data = fill(tree, unique("single"), [64 * KiB] * 6)
    names = list(data)
    model.readdir(scratch.acq_path)
    mark = demo_site.quiet_mark()
    assert read(model, f"{scratch.acq_path}/{names[0]}") == data[names[0]]
    assert read(model, f"{scratch.acq_path}/{names[4]}") == data[names[4]]
    assert read(model, f"{scratch.acq_path}/{names[2]}") == data[names[2]]
    time.sleep(0.5)  # room for a wrong fetch ahead to show in the log
    assert fetched(demo_site, mark, scratch.acq.id) == {n: 1 for n in names[0:5:2]}


def test_a_walk_that_only_lists_fetches_no_file(
    demo_site: Any, tree: Scratch, model: FlywheelFS, unique: Callable[[str], str]
) -> None:
    scratch, _ = fill(tree, unique("listed"), [64 * KiB] * 3)
    mark = demo_site.quiet_mark()

    def walk(path: str) -> None:  # ls -lR
        for name, attr in model.readdir(path):
            if attr.mode & 0o040000:
                walk(f"{path}/{name}")

    walk(scratch.project_path)
    time.sleep(0.5)
    entries = demo_site.requests_since(mark)
    assert [e for e in entries if "/files/" in e["path"]] == []
    assert model.walk.fetched_files == 0


def test_a_walk_that_reads_files_has_the_next_directory_fetched_when_listed(
    demo_site: Any, tree: Scratch, model: FlywheelFS, unique: Callable[[str], str]
) -> None:
    """`cp -r`: after reading one acquisition's files in order, listing the next one fetches
    its files before the program opens any of them."""
    first, first_data = fill(tree, unique("cp-a"), [64 * KiB] * 3)
    second, second_data = fill(tree, unique("cp-b"), [96 * KiB] * 4)
    mark = demo_site.quiet_mark()
    for name, body in first_data.items():
        assert read(model, f"{first.acq_path}/{name}") == body
    model.readdir(second.acq_path)
    names = list(second_data)
    wait_fetched(demo_site, mark, second.acq.id, names)
    for name, body in second_data.items():
        assert read(model, f"{second.acq_path}/{name}") == body
    assert fetched(demo_site, mark, second.acq.id) == {n: 1 for n in names}


def test_a_failed_fetch_ahead_is_seen_by_nobody(
    demo_site: Any, tree: Scratch, model: FlywheelFS, unique: Callable[[str], str]
) -> None:
    """Files deleted on the site after the mount listed them: the fetches ahead fail and
    settle nothing, so the program's own read asks the site again and gets its own answer."""
    scratch, data = fill(tree, unique("gone"), [64 * KiB] * 4)
    names = list(data)
    assert read(model, f"{scratch.acq_path}/{names[0]}") == data[names[0]]
    for name in names[2:]:
        scratch.fw.delete_acquisition_file(scratch.acq.id, name)
    mark = demo_site.quiet_mark()
    assert read(model, f"{scratch.acq_path}/{names[1]}") == data[names[1]]
    wait_fetched(demo_site, mark, scratch.acq.id, names[2:])
    with pytest.raises(FwfsError):
        read(model, f"{scratch.acq_path}/{names[2]}")
    # The failed fetch ahead, then the program's own.
    assert fetched(demo_site, mark, scratch.acq.id)[names[2]] == 2
