"""`fwfs prefetch`'s selection and budget (fwfs/prefetch.py), over a tree in memory: what
is selected, each file once; a zip's member directory is not read beside the zip; a
selection over the budget is refused saying what would fit."""

from __future__ import annotations

import threading

from fwfs.prefetch import Plan, fitting, on_disk, plan

MiB = 1 << 20


class Tree:
    """A Reader over {path: size or None (a directory)}."""

    def __init__(self, entries: dict[str, int | None]) -> None:
        self.entries = entries

    def stat(self, path: str) -> tuple[bool, int]:
        if path not in self.entries:
            raise FileNotFoundError(2, "No such file or directory")
        size = self.entries[path]
        return size is None, size or 0

    def listdir(self, path: str) -> list[tuple[str, bool, int]]:
        prefix = path.rstrip("/") + "/"
        return [
            (p[len(prefix) :], size is None, size or 0)
            for p, size in self.entries.items()
            if p.startswith(prefix) and "/" not in p[len(prefix) :]
        ]

    def read(self, path: str, on_bytes: object, stop: threading.Event) -> None:
        raise AssertionError("plan() reads nothing")

    def dropped(self) -> int:
        return 0


TREE = Tree(
    {
        "/g/p": None,
        "/g/p/a.bin": 3 * MiB,
        "/g/p/s": None,
        "/g/p/s/scan.zip": 2 * MiB,
        "/g/p/s/scan.zip.d": None,
        "/g/p/s/scan.zip.d/member.txt": 10,
        "/g/p/s/notes.d": None,
        "/g/p/s/notes.d/x.txt": 5,
    }
)


def test_each_file_once_and_no_zip_members() -> None:
    selected = plan(TREE, ["/g/p", "/g/p/a.bin", "/g/p/s/nope"])
    assert selected.files == [
        ("/g/p/a.bin", 3 * MiB),
        ("/g/p/s/notes.d/x.txt", 5),
        ("/g/p/s/scan.zip", 2 * MiB),
    ]
    assert [path for path, _ in selected.failed] == ["/g/p/s/nope"]
    # Asked for by name, a member directory is read.
    assert plan(TREE, ["/g/p/s/scan.zip.d"]).files == [("/g/p/s/scan.zip.d/member.txt", 10)]


def test_a_selection_over_the_budget_is_refused_saying_what_fits() -> None:
    selection = Plan([("/a", 3 * MiB), ("/b", 3 * MiB), ("/c", 3 * MiB)], [])
    assert fitting(selection, 20 * MiB) is None
    why = fitting(selection, 8 * MiB)
    assert why is not None
    assert "3 files, 9.0 MiB" in why and "The first 2 files" in why
    # The on-disk size counts a header per 128 KiB block, in whole 4 KiB pages.
    assert on_disk(128 << 10) == (128 << 10) + 4096
    assert on_disk(1) == 4096


def test_ctrl_c_while_listing_exits_130_without_a_traceback() -> None:
    import argparse
    import io

    from fwfs.prefetch import _finish

    class Interrupted(Tree):
        def listdir(self, path: str) -> list[tuple[str, bool, int]]:
            raise KeyboardInterrupt

    out, err = io.StringIO(), io.StringIO()
    code = _finish(
        argparse.Namespace(jobs=2), Interrupted(TREE.entries), ["/g/p"], 1 << 30, out, err
    )
    assert code == 130
    assert "interrupted while listing" in err.getvalue()
