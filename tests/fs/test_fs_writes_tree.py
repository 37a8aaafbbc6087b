"""FlywheelFS writes, driven directly (no FUSE) against the sandbox: the namespace, where only
the model can show it: chmod, chown and utimens (set_metadata), and a file named as a
container (docs/SEMANTICS.md *Names*). The SDK (`scratch.fw`) is the witness of what the site
holds.

mkdir, deleting, renaming, names with `／` and every refusal with its errno run against the
model and a mount alike: tests/writes/test_write_tree.py.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import flywheel
import pytest
from writekit import (
    MakeFs,
    Scratch,
    changes,
    errno_of,
    names,
    write_file,
)

pytestmark = pytest.mark.timeout(120)


def test_chmod_chown_utimens_are_accepted_and_change_nothing(
    scratch: Scratch, make_fs: MakeFs
) -> None:
    before = scratch.put("kept.txt", b"kept")
    fs = make_fs()
    path = f"{scratch.acq_path}/kept.txt"
    attr = fs.getattr(path)
    mark = scratch.site.quiet_mark()
    fs.set_metadata(path)
    fs.set_metadata(scratch.acq_path)
    assert changes(scratch.site.requests_since(mark)) == []
    assert fs.getattr(path) == attr
    assert scratch.files()["kept.txt"].version == before.version
    assert errno_of(lambda: fs.set_metadata(f"{scratch.acq_path}/missing.txt")) == errno.ENOENT


# ---- names: a file beside a container of its name -----------------------------------------


def test_a_file_named_as_a_container_never_takes_the_containers_name(
    scratch: Scratch, make_fs: MakeFs, unique: Callable[[str], str]
) -> None:
    # docs/SEMANTICS.md *Names*, rule 2: the site's path `…/T1w` is the acquisition, so a
    # pipeline working in `ses/T1w/` keeps its directory whatever files come and go.
    label = unique("ses")
    session = scratch.subject.add_session(label=label)
    acq_id = session.add_acquisition(label="T1w").id.encode()
    ses = f"{scratch.subject_path}/{label}"

    def put(name: str, data: bytes) -> None:
        scratch.fw.upload_file_to_container(session.id, flywheel.FileSpec(name, data))

    fs = make_fs(allow_delete=True, metadata_ttl=0)
    assert names(fs, ses) == {"T1w"}
    # A file of that name appears beside it (a pipeline's upload through the SDK).
    put("T1w", b"notes\n")
    assert names(fs, ses) == {"T1w", "T1w (file-5b6cf69b)"}
    assert fs.getxattr(f"{ses}/T1w", "user.flywheel.id") == acq_id
    # The kernel sees the directory at `T1w`; the file is rewritten at its suffixed name,
    # under its own name on the site, and the directory stays put.
    assert errno_of(lambda: fs.create(f"{ses}/T1w")) in (errno.EISDIR, errno.EEXIST)
    write_file(fs, f"{ses}/T1w (file-5b6cf69b)", b"notes, again\n")
    assert scratch.data("T1w", session.id) == b"notes, again\n"
    assert names(fs, ses) == {"T1w", "T1w (file-5b6cf69b)"}
    assert fs.getxattr(f"{ses}/T1w", "user.flywheel.id") == acq_id
    # A second model, which lists the session only now, names it alike.
    other = make_fs(read_only=True)
    assert names(other, ses) == {"T1w", "T1w (file-5b6cf69b)"}
    assert other.getxattr(f"{ses}/T1w", "user.flywheel.id") == acq_id
    # Gone again: the acquisition is where it was all along.
    fs.unlink(f"{ses}/T1w (file-5b6cf69b)")
    assert names(fs, ses) == {"T1w"}
    assert fs.getxattr(f"{ses}/T1w", "user.flywheel.id") == acq_id
    # mkdir of a name a file holds is refused: the file would lose its name to it.
    put("notes", b"n\n")
    assert errno_of(lambda: fs.mkdir(f"{ses}/notes")) == errno.EEXIST
    assert names(fs, ses) == {"T1w", "notes"}
