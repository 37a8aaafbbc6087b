"""Issue 7, item 4: bad input. Labels and file names with every awkward character, names of
255 bytes and more, names that differ only in case, `<id:...>` aliases that name nothing or
the wrong thing, nasty zip archives, and a directory of 20,000 files, on a real mount of a
real sandbox site.

Each is shown by the naming rules of docs/SEMANTICS.md (*Names*: escaping, collisions,
suffixes, length, alias shapes), with working `stat`, extended attributes that give the raw
label back and the right bytes, or refused with a clear errno; and the daemon never dies
and never logs a traceback.

What the site holds is made through the SDK where the API takes it. The sandbox refuses
some of what a Flywheel site can hold (empty labels, file names with `/`, `.` and `..`), and
the SDK percent-escapes control characters in file names; those, and the 20,000 files, are
put into the site's store directly, between two runs of the site on one data directory, as
a site holding them would list them.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import flywheel
import pytest
from mountkit import Mount, errno_of, root_conftest, start_mount, stop_mount
from test_zip_corpus import BROKEN, broken_zip

pytestmark = pytest.mark.timeout(120)

MANY = 20_000
SES = "g/P/sub/ses"
FILES = f"{SES}/files"
ZIPS = f"{SES}/zips"
MANY_DIR = "g/P/sub/ses-many/many"
NO_ID = "000000000000000000000000"

# Labels the API takes as they are; the expected name (None: worked out from the id).
LABELS: dict[str, str | None] = {
    "T2/FLAIR": "T2／FLAIR",
    "back\\slash": "back\\slash",
    "new\nline": "new\nline",
    "tab\there": "tab\there",
    "ctl\x01\x1f\x7f": "ctl\x01\x1f\x7f",
    "nul\x00byte": "nul␀byte",
    " leading space": " leading space",
    "trailing space ": "trailing space ",
    ".": "．",
    "..": "．．",
    "...": "...",
    "../../etc": "..／..／etc",
    "/abs": "／abs",
    "emoji 🧠📈": "emoji 🧠📈",
    "combining e\u0301": "combining e\u0301",
    "rtl \u202etxt.exe": "rtl \u202etxt.exe",
    "hebrew שלום": "hebrew שלום",
    "x" * 255: "x" * 255,  # exactly NAME_MAX: kept whole
    "Case": "Case",
    "case": "case",
    "y" * 256: None,  # one byte over: cut, with its suffix
    "脳" * 100: None,  # 300 bytes of 3-byte characters
    f"<id:{NO_ID}>": None,  # reads like an alias: suffixed
    "analyses": None,  # the reserved name: suffixed
}
# Labels the sandbox API refuses but a site may hold: put into the store.
STORE_LABELS = {"": "(no label)"}

# File names the API and the SDK pass through unchanged.
FILE_NAMES = [
    "back\\slash.txt",
    "new\nline.txt",
    " leading.txt",
    "trailing.txt ",
    "...",
    "del\x7f.txt",
    "emoji 🧠.nii.gz",
    "combining e\u0301.txt",
    "rtl \u202egpj.exe",
    "Scan.TXT",
    "scan.txt",
    "x" * 255,
    "y" * 256,
    "脳" * 98 + ".nii.gz",
    f"<id:{NO_ID}>",
    "analyses",
]
# File names the SDK would not send as they are (it percent-escapes control characters) or
# the sandbox refuses: put into the store.
STORE_FILE_NAMES = ["tab\t.txt", "ctl\x01\x1b.txt", "nul\x00.txt", "a/b.txt", ""]
# File names the sandbox refuses at upload (400), as Flywheel does.
REFUSED_FILE_NAMES = ["a/b", ".", ".."]


def content(name: str) -> bytes:
    return b"bytes of " + name.encode("utf-8", "surrogatepass") + b"\n"


def create_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT))


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def cut(text: str, budget: int) -> str:
    """The longest whole-character prefix of `text` within `budget` UTF-8 bytes."""
    out = ""
    for ch in text:
        if utf8_len(out + ch) > budget:
            break
        out += ch
    return out


def escaped(raw: str) -> str:
    """Rule 1 of *Names*, for a name that collides with nothing."""
    if raw in (".", ".."):
        return raw.replace(".", "．")
    return raw.replace("/", "／").replace("\x00", "␀") or "(no label)"


def container_name(label: str, cid: str) -> str:
    """Rules 1-5 for a container label among siblings it does not collide with."""
    name = escaped(label)
    suffix = f" ({cid[-8:]})"
    if utf8_len(name) > 255:
        return cut(name, 255 - utf8_len(suffix)) + suffix
    if name == "analyses" or name.startswith("<id:"):
        return name + suffix
    return name


def file_name(raw: str) -> str:
    """Rules 1-5 for a file name among siblings it does not collide with."""
    name = escaped(raw)
    dot = name.find(".", 1)
    stem, ext = (name, "") if dot < 0 else (name[:dot], name[dot:])
    suffix = f" (file-{hashlib.sha1(raw.encode()).hexdigest()[:8]})"
    if utf8_len(name) > 255:
        return cut(stem, 255 - utf8_len(suffix) - utf8_len(ext)) + suffix + ext
    if name == "analyses" or name.startswith("<id:"):
        return stem + suffix + ext
    return name


def nasty_zips() -> dict[str, bytes]:
    """zip-slip and absolute member names, duplicates, a zip bomb, a cut central directory
    and corrupt members (test_zip_corpus's broken_zip)."""
    out: dict[str, bytes] = {}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, name in enumerate(
            [
                "../../../../../tmp/fwfs-slip.txt",
                "/etc/cron.d/fwfs",
                "a/../../up.txt",
                "..\\..\\win.txt",
                "..",
                "ok.txt",
            ]
        ):
            z.writestr(name, f"member {i}\n".encode())
        link = zipfile.ZipInfo("link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, b"/etc/shadow")
    out["slip.zip"] = buf.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z, pytest.warns(UserWarning, match="Duplicate name"):
        for n in range(3):
            z.writestr("dup.txt", f"copy {n}\n".encode())
    out["dups.zip"] = buf.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("zeros.bin", "w") as f:
            for _ in range(BOMB >> 20):
                f.write(bytes(1 << 20))
        z.writestr("note.txt", b"the small one\n")
    out["bomb.zip"] = buf.getvalue()
    whole = out["slip.zip"]
    out["cut.zip"] = whole[: whole.rindex(b"PK\x01\x02") + 10]  # inside the last entry
    out["broken.zip"] = broken_zip(large=False)[0]
    return out


BOMB = 64 << 20  # the zip bomb's member: 64 MiB of zeros, deflated to some 64 KiB


@dataclass
class BadSite:
    site: Any
    fw: Any
    mount: Mount
    ids: dict[str, str] = field(default_factory=dict)  # label or role -> container id
    zips: dict[str, bytes] = field(default_factory=dict)
    file_ids: dict[str, str] = field(default_factory=dict)


def add_many_files(store: Any, container_id: str, files: dict[str, bytes]) -> None:
    """Rows and blobs as `Store.add_file` makes them (version 1 of new names), in one
    statement: `add_file` looks for older versions of each name first, which for 20,000
    names in one container takes half a minute."""
    from fwfs.sandbox.files import file_type, mimetype

    rows = []
    for name, data in files.items():
        file_id = store.new_id()
        blob = f"{file_id[-2:]}/{file_id}"
        (store.blob_dir / blob).parent.mkdir(exist_ok=True)
        (store.blob_dir / blob).write_bytes(data)
        doc: dict[str, Any] = {
            "hash": "v0-sha384-" + hashlib.sha384(data).hexdigest(),
            "mimetype": mimetype(name),
            "type": file_type(name),
            "modality": None,
            "classification": {},
            "origin": {"type": "user", "id": "ada@fwfs.example"},
            "zip_member_count": None,
            "created": "2024-01-01T00:00:00.000000+00:00",
            "modified": "2024-01-01T00:00:00.000000+00:00",
            "info": {},
            "tags": [],
        }
        rows.append((file_id, container_id, name, 1, 1, "files", len(data), blob, json.dumps(doc)))
    store._db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


@pytest.fixture(scope="module")
def bad(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BadSite]:
    from fwfs.sandbox.seed import Seeder
    from fwfs.sandbox.store import Store

    root = root_conftest(request.config)
    workdir = tmp_path_factory.mktemp("bad-site")
    site = root.start_sandbox(workdir, demo=False)
    fw = site.client()
    fw.add_group(flywheel.Group("g", "Bad input"))
    project = fw.get_group("g").add_project(label="P")
    sub = project.add_subject(label="sub")
    ses = sub.add_session(label="ses")
    ids = {"g": "g", "P": project.id, "sub": sub.id, "ses": ses.id}
    for label in LABELS:
        ids[label] = ses.add_acquisition(label=label).id
    files = ses.add_acquisition(label="files")
    for name in FILE_NAMES:
        files.upload_file(flywheel.FileSpec(name, content(name)))
    zips_acq = ses.add_acquisition(label="zips")
    zips = nasty_zips()
    for name, data in zips.items():
        zips_acq.upload_file(flywheel.FileSpec(name, data))
    many = sub.add_session(label="ses-many").add_acquisition(label="many")
    other_subject = project.add_subject(label="other")
    other = other_subject.add_session(label="ses-other")
    ids.update(files=files.id, zips=zips_acq.id, many=many.id, other=other.id)
    ids["other_subject"] = other_subject.id
    file_ids = {f.name: f.file_id for f in fw.get(files.id).files}
    assert site.stop() == 0

    # What the API does not take, and the 20,000 files, straight into the site's store.
    store = Store(site.data)
    seeder = Seeder(store)
    when = datetime(2024, 1, 1, tzinfo=timezone.utc)
    with store.transaction():
        for label in STORE_LABELS:
            ids[label] = seeder.container(
                "acquisition", store.get_container(ses.id), label, when
            ).id
        files_container = store.get_container(files.id)
        assert files_container is not None
        for name in STORE_FILE_NAMES:
            seeder.file(files_container, name, content(name), when)
        add_many_files(
            store, many.id, {f"slice-{i:05d}.dcm": b"slice %d\n" % i for i in range(MANY)}
        )
    store.close()

    site = root.start_sandbox(workdir, demo=False, data=site.data)
    request.addfinalizer(site.stop)
    mount = start_mount(site, tmp_path_factory.mktemp("bad-mount"))
    request.addfinalizer(lambda: stop_mount(mount))
    yield BadSite(site, site.client(), mount, ids, zips, file_ids)


def healthy(mount: Mount) -> None:
    """Alive, answering, and no traceback in the log."""
    assert mount.alive
    assert os.path.isdir(mount / SES)
    assert "Traceback" not in mount.log(), mount.log()[-4000:]


# ---- labels and file names ---------------------------------------------------------------


def test_awkward_labels_are_named_by_the_rules(
    bad: BadSite, record: Callable[[str, object], None]
) -> None:
    folder = bad.mount / SES
    expected = {container_name(label, bad.ids[label]): label for label in [*LABELS, *STORE_LABELS]}
    for label, name in {**LABELS, **STORE_LABELS}.items():
        if name is not None:
            assert container_name(label, bad.ids[label]) == name, label
    names = set(os.listdir(folder))
    assert names == set(expected) | {"files", "zips"}
    for name, label in expected.items():
        path = folder / name
        assert utf8_len(name) <= 255
        assert stat.S_ISDIR(os.stat(path).st_mode), repr(name)
        assert os.getxattr(path, "user.flywheel.label").decode() == label, repr(name)
        assert os.getxattr(path, "user.flywheel.id").decode() == bad.ids[label]
        assert os.listdir(path) == []
        # Its id alias reaches the same container.
        alias = folder / f"<id:{bad.ids[label]}>"
        assert os.getxattr(alias, "user.flywheel.label").decode() == label
    # Long labels: cut on a character boundary, the suffix always there, distinct.
    assert utf8_len(container_name("y" * 256, bad.ids["y" * 256])) == 255
    assert container_name("脳" * 100, bad.ids["脳" * 100]).startswith("脳" * 81 + " (")
    healthy(bad.mount)
    record("bad input: awkward container labels", len(expected))


def test_awkward_file_names_read_back_exactly(
    bad: BadSite, record: Callable[[str, object], None]
) -> None:
    folder = bad.mount / FILES
    on_site = {f.name for f in bad.fw.get(bad.ids["files"]).files}
    assert set(FILE_NAMES) | set(STORE_FILE_NAMES) <= on_site  # the site holds them as sent
    # A file without a name cannot be read (the API reads a file by its name): it is left
    # out of the listing, with a log line, and every other file is shown.
    expected = {file_name(raw): raw for raw in set(FILE_NAMES) | set(STORE_FILE_NAMES) if raw}
    assert len(expected) == len(FILE_NAMES) + len(STORE_FILE_NAMES) - 1
    assert set(expected) <= set(os.listdir(folder))
    assert "(no label)" not in os.listdir(folder)
    assert "skipping a malformed entry" in bad.mount.log()
    for name, raw in expected.items():
        path = folder / name
        st = os.stat(path)
        assert stat.S_ISREG(st.st_mode) and st.st_size == len(content(raw)), repr(name)
        assert path.read_bytes() == content(raw), repr(name)
        assert os.getxattr(path, "user.flywheel.name").decode() == raw, repr(name)
    # Names the documented table shows, for the file kinds.
    assert file_name("analyses") == "analyses (file-50daf91e)"
    assert file_name("a/b.txt") == "a／b.txt" and file_name("nul\x00.txt") == "nul␀.txt"
    long = file_name("脳" * 98 + ".nii.gz")
    assert long.endswith(").nii.gz") and utf8_len(long) <= 255
    assert utf8_len(file_name("y" * 256)) == 255 and "x" * 255 in expected
    healthy(bad.mount)
    record("bad input: awkward file names", len(expected))


def test_names_that_differ_only_in_case_are_two_files(bad: BadSite) -> None:
    folder = bad.mount / FILES
    assert (folder / "Scan.TXT").read_bytes() == content("Scan.TXT")
    assert (folder / "scan.txt").read_bytes() == content("scan.txt")
    assert errno_of(lambda: os.stat(folder / "SCAN.txt")) == errno.ENOENT
    assert {"Case", "case"} <= set(os.listdir(bad.mount / SES))
    assert os.getxattr(bad.mount / SES / "Case", "user.flywheel.id").decode() == bad.ids["Case"]
    assert os.getxattr(bad.mount / SES / "case", "user.flywheel.id").decode() == bad.ids["case"]


def test_names_over_255_bytes_are_refused_and_255_bytes_work(
    bad: BadSite, record: Callable[[str, object], None]
) -> None:
    folder = bad.mount / FILES
    # A new file of exactly 255 bytes of name, and a session of a 255-byte label: as typed.
    name = "n" * 251 + ".txt"
    (folder / name).write_bytes(b"two hundred and fifty-five\n")
    assert bad.fw.download_file_from_container_as_data(bad.ids["files"], name) == (
        b"two hundred and fifty-five\n"
    )
    assert (folder / name).read_bytes() == b"two hundred and fifty-five\n"
    label = "é" * 127 + "s"  # 255 bytes
    os.mkdir(bad.mount / "g/P/sub" / label)
    assert label in [s.label for s in bad.fw.get(bad.ids["sub"]).sessions()]
    assert os.getxattr(bad.mount / "g/P/sub" / label, "user.flywheel.label") == label.encode()
    # Longer: ENAMETOOLONG (docs/SEMANTICS.md, *Errors*), whatever the call, and nothing
    # reaches the site (a name the site took would be listed cut short, elsewhere).
    session = bad.mount / "g/P/sub/ses"
    got = {}
    for long in ("w" * 256, "脳" * 86, "z" * 300):  # 256, 258 and 300 bytes
        calls: dict[str, Callable[[], Any]] = {
            "stat": partial(os.stat, folder / long),
            "create": partial(create_file, folder / long),
            "mkdir": partial(os.mkdir, session / long),
            "rename": partial(os.rename, folder / name, folder / long),
        }
        for what, call in calls.items():
            try:
                call()
                got[f"{what} {utf8_len(long)}"] = "success"
            except OSError as err:
                assert err.errno is not None
                got[f"{what} {utf8_len(long)}"] = errno.errorcode[err.errno]
    assert got == dict.fromkeys(got, "ENAMETOOLONG")
    files = {f.name for f in bad.fw.get(bad.ids["files"]).files}
    labels = {a.label for a in bad.fw.get(bad.ids["ses"]).acquisitions()}
    assert not {n for n in files | labels if utf8_len(n) > 255} - set(LABELS) - set(FILE_NAMES)
    healthy(bad.mount)
    record("bad input: names over 255 bytes refused", len(got))


def test_typed_names_with_awkward_characters_reach_the_site(bad: BadSite) -> None:
    """mkdir and create with the characters a label or name may hold, typed as *Names*
    says (`／` for `/`, and `．`, `．．` for the names `.` and `..`)."""
    subject = bad.mount / "g/P/other"
    typed = {
        "a／b": "a/b",
        "．．": "..",
        "．": ".",
        "a．．b": "a．．b",  # only the whole name `．．` means `..`
        "tab\tnew\nline": "tab\tnew\nline",
        " 🧠 ": " 🧠 ",
        "\u202eRTL": "\u202eRTL",
    }
    for name, label in typed.items():
        os.mkdir(subject / name)
        assert os.getxattr(subject / name, "user.flywheel.label").decode() == label, name
    labels = {s.label for s in bad.fw.get(bad.ids["other_subject"]).sessions()}
    assert set(typed.values()) <= labels
    # A file name may not hold `/`: refused before anything is staged or sent.
    folder = bad.mount / FILES
    assert errno_of(lambda: open(folder / "a／b.bin", "wb").close()) == errno.EINVAL
    assert "a/b.bin" not in {f.name for f in bad.fw.get(bad.ids["files"]).files}
    for name in ("new\nline.bin", "back\\slash.bin", " 🧠.bin", "\u202eRTL.bin"):
        (folder / name).write_bytes(content(name))
        assert site_hash(bad, name) == hashlib.sha384(content(name)).hexdigest(), repr(name)
    healthy(bad.mount)


def site_hash(bad: BadSite, name: str) -> str:
    """The SHA-384 the site computed of a file's bytes (on upload): a witness that needs no
    download."""
    info = {f.name: f for f in bad.fw.get(bad.ids["files"]).files}[name]
    return str(info.hash).removeprefix("v0-sha384-")


def test_the_site_refuses_file_names_a_path_cannot_hold(bad: BadSite) -> None:
    acquisition = bad.fw.get(bad.ids["files"])
    for name in REFUSED_FILE_NAMES:
        with pytest.raises(flywheel.ApiException) as info:
            acquisition.upload_file(flywheel.FileSpec(name, b"refused\n"))
        assert info.value.status == 400, name
    assert not set(REFUSED_FILE_NAMES) & {f.name for f in bad.fw.get(bad.ids["files"]).files}


def test_the_sdk_downloads_a_file_whose_name_holds_a_newline(bad: BadSite) -> None:
    """The sandbox must answer the SDK's download of any name it stored: the ASCII
    fallback of its Content-Disposition header must not carry the raw newline."""
    name = "new\nline.txt"
    assert bad.fw.download_file_from_container_as_data(bad.ids["files"], name) == content(name)


# ---- id aliases ----------------------------------------------------------------------------


def test_id_aliases_that_name_nothing_or_the_wrong_thing_are_enoent(
    bad: BadSite, record: Callable[[str, object], None]
) -> None:
    m = bad.mount
    ids = bad.ids
    file_id = bad.file_ids["scan.txt"]
    other_session = ids["other"]
    wrong = {
        "an id no container has, at the root": m / f"<id:{NO_ID}>",
        "an id no container has, in a project": m / "g/P" / f"<id:{NO_ID}>",
        "a file id in its acquisition": m / FILES / f"<id:{file_id}>",
        "a file id in a project": m / "g/P" / f"<id:{file_id}>",
        "a group id under a project": m / "g/P" / "<id:g>",
        "a project id at the root": m / f"<id:{ids['P']}>",
        "a session under another subject": m / "g/P/sub" / f"<id:{other_session}>",
        "an acquisition under its subject": m / "g/P/sub" / f"<id:{ids['files']}>",
        "a subject under itself": m / "g/P/sub" / f"<id:{ids['sub']}>",
        "empty": m / "g/P" / "<id:>",
        "a path": m / "g/P" / "<id:../../etc>",
        "too long": m / "g/P" / f"<id:{'a' * 65}>",
        "upper case": m / "g/P" / f"<ID:{ids['sub']}>",
        "unclosed": m / "g/P" / f"<id:{ids['sub']}",
    }
    for what, path in wrong.items():
        assert errno_of(partial(os.stat, path)) == errno.ENOENT, what
        assert errno_of(partial(os.listdir, path)) == errno.ENOENT, what
    # The right ones work: a control for every shape above.
    assert os.getxattr(m / f"<id:{ids['g']}>", "user.flywheel.id").decode() == "g"
    assert (
        os.getxattr(m / "g/P/sub" / f"<id:{ids['ses']}>", "user.flywheel.id").decode()
        == (ids["ses"])
    )
    assert os.getxattr(m / "g/P" / f"<id:{ids['sub']}>", "user.flywheel.label") == b"sub"
    healthy(m)
    record("bad input: wrong id aliases", len(wrong))


# ---- archives -------------------------------------------------------------------------------


def test_nasty_archives_show_sanely_or_fail_with_a_clear_errno(
    bad: BadSite, record: Callable[[str, object], None]
) -> None:
    folder = bad.mount / ZIPS
    for name, data in bad.zips.items():
        assert (folder / name).read_bytes() == data, name  # the archive itself, always
    # zip-slip and absolute names: all inside the member directory, each with its bytes.
    root = folder / "slip.zip.d"
    archive = zipfile.ZipFile(io.BytesIO(bad.zips["slip.zip"]))
    seen = []
    for dirpath, dirnames, filenames in os.walk(root):
        assert Path(dirpath).resolve().is_relative_to(root.resolve())
        for entry in dirnames + filenames:
            assert entry not in (".", "..") and not os.path.islink(os.path.join(dirpath, entry))
        seen += [Path(dirpath, n).read_bytes() for n in filenames]
    assert Counter(seen) == Counter(archive.read(i) for i in archive.infolist())
    assert not Path("/tmp/fwfs-slip.txt").exists() and not Path("/etc/cron.d/fwfs").exists()
    # Duplicates: every copy, under its own stable name.
    dups = sorted(os.listdir(folder / "dups.zip.d"))
    assert len(dups) == 3 and all(n.startswith("dup (") for n in dups), dups
    copies = {(folder / "dups.zip.d" / n).read_bytes() for n in dups}
    assert copies == {b"copy 0\n", b"copy 1\n", b"copy 2\n"}
    # A bomb of 1,000:1 and more: its true size, and exactly its bytes.
    bomb = folder / "bomb.zip.d/zeros.bin"
    assert len(bad.zips["bomb.zip"]) * 500 < BOMB
    assert os.stat(bomb).st_size == BOMB
    digest = hashlib.sha256()
    with open(bomb, "rb") as f:
        while block := f.read(4 << 20):
            digest.update(block)
    assert digest.hexdigest() == hashlib.sha256(bytes(BOMB)).hexdigest()
    assert (folder / "bomb.zip.d/note.txt").read_bytes() == b"the small one\n"
    # A cut central directory: no member directory, the file still reads.
    assert errno_of(lambda: os.listdir(folder / "cut.zip.d")) == errno.ENOENT
    # Corrupt members: EIO, and the good ones read.
    for name in BROKEN:
        assert errno_of((folder / "broken.zip.d" / name).read_bytes) == errno.EIO
    assert (folder / "broken.zip.d/first.txt").read_bytes() == b"first good member\n" * 50
    healthy(bad.mount)
    record("bad input: nasty archives", len(bad.zips))


# ---- a big directory -----------------------------------------------------------------------


def test_a_directory_of_20000_files_lists_and_stats(
    bad: BadSite, record: Callable[[str, object], None]
) -> None:
    folder = bad.mount / MANY_DIR
    names = os.listdir(folder)
    assert len(names) == MANY
    assert sorted(names) == [f"slice-{i:05d}.dcm" for i in range(MANY)]
    sizes: Counter[int] = Counter()
    with os.scandir(folder) as entries:
        for entry in entries:
            st = entry.stat()
            assert stat.S_ISREG(st.st_mode)
            sizes[st.st_size] += 1
    assert sum(sizes.values()) == MANY
    assert sizes == Counter(len(b"slice %d\n" % i) for i in range(MANY))
    for i in (0, 1, 9_999, 12_345, MANY - 1):
        assert (folder / f"slice-{i:05d}.dcm").read_bytes() == b"slice %d\n" % i
    assert errno_of(lambda: os.stat(folder / f"slice-{MANY:05d}.dcm")) == errno.ENOENT
    healthy(bad.mount)
    record("bad input: entries in one listing", len(names))
