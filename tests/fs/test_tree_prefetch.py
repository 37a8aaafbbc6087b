"""Listing ahead of a walk (`Tree(prefetch=...)`, `Tree.listdir`), against the demo sandbox.

What a user would check: a walk (`ls -R`, `find`) sees the same tree and costs the site the
same number of requests with listings fetched ahead as without; a single `ls` costs its one
listing; a listing fetched before this mount changed the directory is never served; a
listing that failed ahead of the walk is fetched again when the walk gets there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from fwfs.client import FlywheelClient
from fwfs.config import ClientConfig
from fwfs.errors import RemoteUnavailable
from fwfs.fs.nodes import Dir
from fwfs.fs.tree import ROOT, Tree

pytestmark = pytest.mark.timeout(120)

GROUP, PROJECT = "flywheel", "Anxiety Study"


class Hooked:
    """The real client, with `hook(path)` run once each `/resolve` has its answer."""

    def __init__(self, real: FlywheelClient, hook: Callable[[list[str]], None]) -> None:
        self._real = real
        self._hook = hook

    def resolve(self, path: Sequence[str]) -> dict[str, Any]:
        doc = self._real.resolve(path)
        self._hook(list(path))
        return doc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.fixture
def client(demo_site: Any) -> Iterator[FlywheelClient]:
    config = ClientConfig.from_api_key(
        demo_site.api_key, retries=1, total_timeout=10, read_timeout=20
    )
    with FlywheelClient(config) as c:
        yield c


def resolves(site: Any, mark: int) -> int:
    return sum(
        1 for r in site.requests_since(mark) if (r["method"], r["path"]) == ("POST", "/api/resolve")
    )


def project_of(tree: Tree) -> Dir:
    """The project as `ls -R …/flywheel/Anxiety Study` reaches it: by lookups on the way."""
    group = tree.child(ROOT, GROUP)
    assert isinstance(group, Dir)
    node = tree.child(group, PROJECT)
    assert isinstance(node, Dir)
    return node


def subject_walked_into(tree: Tree, name: str) -> Dir:
    """`ls -R` of the project reaching subject `name` after another one: a walk."""
    project = project_of(tree)
    entries = tree.listdir(project).entries
    other = next(n for n, x in entries.items() if isinstance(x, Dir) and n != name)
    for step in (other, name):
        node = entries[step]
        assert isinstance(node, Dir)
        tree.listdir(node)
    assert isinstance(node, Dir)
    return node


def walk(tree: Tree, node: Dir) -> dict[str, list[str]]:
    """`ls -R`: enumerate a directory, then each of its subdirectories, depth first."""
    out: dict[str, list[str]] = {}

    def visit(node: Dir, path: str) -> None:
        entries = tree.listdir(node).entries
        out[path] = sorted(entries)
        for name, child in entries.items():
            if isinstance(child, Dir):
                visit(child, f"{path}/{name}")

    visit(node, "")
    return out


def test_a_walk_sees_the_same_tree_for_the_same_requests(
    demo_site: Any, client: FlywheelClient
) -> None:
    plain = Tree(client, 300, 5)
    mark = demo_site.quiet_mark()
    expected = walk(plain, project_of(plain))
    plain_requests = resolves(demo_site, mark)

    pool = ThreadPoolExecutor(4)
    ahead = Tree(client, 300, 5, prefetch=pool, prefetch_limit=4)
    mark = demo_site.quiet_mark()
    seen = walk(ahead, project_of(ahead))
    pool.shutdown(wait=True)
    assert seen == expected
    # One request per directory that needs one: nothing listed twice, nothing extra.
    assert resolves(demo_site, mark) == plain_requests
    assert len(expected) > plain_requests > 3


def test_one_ls_or_going_down_lists_nothing_ahead(demo_site: Any, client: FlywheelClient) -> None:
    pool = ThreadPoolExecutor(4)
    tree = Tree(client, 300, 5, prefetch=pool)
    mark = demo_site.quiet_mark()
    # `ls`, `cd flywheel`, `ls`, `cd 'Anxiety Study'`, `ls`, `cd sub-01`, `ls`.
    node = ROOT
    for name in (GROUP, PROJECT, "sub-01"):
        tree.listdir(node)
        child = tree.child(node, name)
        assert isinstance(child, Dir)
        node = child
    assert any(
        isinstance(x, Dir) and x.kind == "container" for x in tree.listdir(node).entries.values()
    )
    pool.shutdown(wait=True)
    # The group, the project and the subject; the sessions wait until someone enters one.
    assert resolves(demo_site, mark) == 3


def test_a_listing_fetched_ahead_before_a_change_is_not_served(
    demo_site: Any, client: FlywheelClient
) -> None:
    plain = Tree(client, 300, 5)
    subject = plain.child(project_of(plain), "sub-01")
    assert isinstance(subject, Dir)
    sessions = {name: x for name, x in plain.listing(subject).entries.items() if isinstance(x, Dir)}
    assert len(sessions) >= 2, "the demo's sub-01 has a baseline and a follow-up session"
    changed, unchanged = sorted(sessions)[:2]
    tree: Tree
    forgotten: list[Dir] = []

    def change_while_in_flight(path: list[str]) -> None:
        # This mount changes the session after the site answered the listing ahead, before
        # that answer is stored: what a write racing the walk looks like.
        node = sessions[changed]
        assert node.container is not None
        if path[-1] == f"<id:{node.container.id}>":
            tree.forget(node)
            forgotten.append(node)

    pool = ThreadPoolExecutor(2)
    tree = Tree(cast(FlywheelClient, Hooked(client, change_while_in_flight)), 300, 5, prefetch=pool)
    subject_walked_into(tree, "sub-01")  # its sessions are listed ahead
    pool.shutdown(wait=True)
    assert forgotten == [sessions[changed]], "changed while listed ahead"

    expected = sorted(plain.listing(sessions[changed]).entries)
    mark = demo_site.quiet_mark()
    assert tree.listing(sessions[unchanged]).entries
    assert resolves(demo_site, mark) == 0, "listed ahead, and still fresh"
    assert sorted(tree.listing(sessions[changed]).entries) == expected
    assert resolves(demo_site, mark) == 1, "listed again after the change"


def test_a_listing_that_failed_ahead_is_fetched_when_the_walk_gets_there(
    demo_site: Any, client: FlywheelClient
) -> None:
    failed: list[list[str]] = []

    def fail_first_session(path: list[str]) -> None:
        if not failed and len(path) == 4:
            failed.append(path)
            raise RemoteUnavailable("the site went away for a moment")

    pool = ThreadPoolExecutor(2)
    tree = Tree(cast(FlywheelClient, Hooked(client, fail_first_session)), 300, 5, prefetch=pool)
    subject = subject_walked_into(tree, "sub-01")
    pool.shutdown(wait=True)
    assert failed, "a session was listed ahead"

    mark = demo_site.quiet_mark()
    for node in tree.listing(subject).entries.values():
        if isinstance(node, Dir) and node.kind == "container":
            assert tree.listing(node).entries
    assert resolves(demo_site, mark) == 1, "only the one that failed is listed again"
