"""What each operation costs in round trips: the requests a program waits on one after
another (docs/SEMANTICS.md, "Cost of each operation", column "round trips").

The site sits behind the sandbox's link emulator with a long round trip (`RTT_MS`), and
tests/linkkit.py counts the round trips in its access log. A request on a new connection
pays the connection's handshake first, which can make a request sent side by side look
one round trip later; the bounds below are what a program waits for at most.

Every test mounts privately (empty caches), against the default sandbox and its `--strict`
twin (HTTPS, downloads redirected to storage, resolve answers without the children's
files), both behind the same link.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from linkkit import round_trips as chain
from mountkit import DEMO_PROJECT, DEMO_SES, Mount, quiet_mark, requests_since, sh

from fwfs.client import FlywheelClient
from fwfs.config import ClientConfig, MountConfig
from fwfs.fs import FlywheelFS

pytestmark = pytest.mark.timeout(120)

RTT_MS = 150

PROFILES = ("default", "strict")


@pytest.fixture(scope="module", params=PROFILES)
def linked(request: pytest.FixtureRequest, start_shared_site: Callable[..., Any]) -> Any:
    """The demo site (default or `--strict`) behind a link of RTT_MS, 1 Gbit/s."""
    strict = request.param == "strict"
    return start_shared_site(strict=strict, rtt_ms=RTT_MS, bandwidth_mbit=1000)


@pytest.fixture
def strict(linked: Any) -> bool:
    return "--strict" in linked.argv


@pytest.fixture
def fresh(linked: Any, mount_site: Callable[..., Mount]) -> Callable[..., Mount]:
    return lambda **options: mount_site(linked, **options)


def waited(site: Any, action: Callable[[], object]) -> tuple[int, list[dict[str, Any]]]:
    mark = quiet_mark(site)
    action()
    entries = requests_since(site, mark, settle=0.3)
    return round_trips(entries), entries


def round_trips(entries: list[dict[str, Any]]) -> int:
    return chain(entries, RTT_MS)


def test_the_chain_counter_tells_side_by_side_from_one_after_another() -> None:
    def at(start: float, duration: float = 0.001) -> dict[str, Any]:
        return {"start": start, "duration": duration}

    assert round_trips([]) == 0
    assert round_trips([at(0.0), at(0.005), at(0.01)]) == 1
    assert round_trips([at(0.0), at(0.16), at(0.165), at(0.33)]) == 3
    assert round_trips([at(0.0, 0.2), at(0.05), at(0.3)]) == 2


def test_listing_the_root_is_one_round_trip(fresh: Callable[..., Mount], linked: Any) -> None:
    mount = fresh()
    trips, entries = waited(linked, lambda: os.listdir(mount.path))
    assert len(entries) == 2  # /groups and /projects
    assert trips == 1


def test_a_deep_path_on_a_fresh_mount_costs_one_round_trip_per_level(
    fresh: Callable[..., Mount], linked: Any, strict: bool
) -> None:
    mount = fresh()
    trips, entries = waited(linked, lambda: os.stat(mount / DEMO_SES / "DWI/DWI.nii.gz"))
    # The root, then a resolve per level: group, project, subject and session (the
    # session's answer carries its acquisitions' files); a real core's session listing
    # lacks those, so the acquisition is one level more. The kernel looks a path up one
    # name at a time, so no lookup knows the names below its own: nothing to list ahead.
    assert trips <= (6 if strict else 5), entries
    assert len(entries) == trips + 1  # the root's two lists share their round trip


def test_a_deep_path_looked_up_whole_costs_one_round_trip_and_two_on_a_real_core(
    linked: Any, strict: bool
) -> None:
    # What flywheel:// and `fwfs prefetch` do: the model itself, asked for the whole path.
    config = ClientConfig.from_api_key(
        linked.api_key, verify=linked.verify, retries=1, total_timeout=30, read_timeout=30
    )
    client = FlywheelClient(config)
    model = FlywheelFS(client, MountConfig(metadata_ttl=300), None)
    try:
        trips, entries = waited(linked, lambda: model.getattr(f"{DEMO_SES}/DWI/DWI.nii.gz"))
        # The root's two lists, and the levels below it by their labels, side by side:
        # group, project, subject, session. A real core's session answer lacks its
        # acquisitions' files, which the model does not know before its first answers:
        # there the acquisition's listing is a round trip more, the first time only.
        assert trips <= (2 if strict else 1), entries
        assert len(entries) == (7 if strict else 6), entries
        trips, entries = waited(
            linked, lambda: model.getattr(f"{DEMO_PROJECT}/sub-02/ses-followup/T1w/T1w.nii.gz")
        )
        # The subject by ids (its project is listed), the session and acquisition by labels.
        assert trips <= 1, entries
        assert len(entries) == (3 if strict else 2), entries
    finally:
        model.close()
        client.close()


def test_a_header_read_is_one_round_trip_and_two_on_a_real_core(
    fresh: Callable[..., Mount], linked: Any, strict: bool
) -> None:
    mount = fresh()
    path = mount / DEMO_SES / "DWI/DWI.nii.gz"
    os.stat(path)

    def head() -> None:
        with open(path, "rb") as f:
            assert len(f.read(352)) == 352

    trips, entries = waited(linked, head)
    # A real core answers the download with a 302 to storage: the URL, then the bytes.
    assert trips == (2 if strict else 1), entries


def test_mkdir_is_two_round_trips(fresh: Callable[..., Mount], linked: Any) -> None:
    mount = fresh()
    os.listdir(mount / DEMO_PROJECT)
    name = f"rt-{uuid.uuid4().hex[:8]}"
    trips, entries = waited(linked, lambda: os.mkdir(mount / DEMO_PROJECT / name))
    # The creation, then the parent listed again, so the new directory shows what the
    # site made of it (its id, its label as stored).
    assert trips == 2, entries
    assert [e["method"] for e in entries] == ["POST", "POST"]


def test_cp_of_a_small_file_costs_one_round_trip_after_close(
    fresh: Callable[..., Mount], linked: Any, tmp_path: Path
) -> None:
    mount = fresh()
    target = mount / DEMO_SES / "DWI"
    os.listdir(target)
    source = tmp_path / "notes.txt"
    source.write_bytes(b"round trips\n" * 100)
    name = f"rt-{uuid.uuid4().hex[:8]}.txt"
    trips, entries = waited(linked, lambda: sh("cp", source, target / name))
    # The upload itself: the mount learnt from /config at connect which way to upload.
    assert trips == 1, entries
    assert (target / name).read_bytes() == source.read_bytes()


def test_mv_to_a_free_name_is_one_round_trip(
    fresh: Callable[..., Mount], linked: Any, tmp_path: Path
) -> None:
    mount = fresh()
    target = mount / DEMO_SES / "DWI"
    name = f"rt-{uuid.uuid4().hex[:8]}.txt"
    (target / name).write_bytes(b"moved\n")
    os.listdir(target)
    trips, entries = waited(linked, lambda: os.rename(target / name, target / f"{name}.moved"))
    assert trips == 1, entries


def test_a_walk_waits_for_fewer_round_trips_than_it_lists_directories(
    fresh: Callable[..., Mount], linked: Any
) -> None:
    mount = fresh()
    os.listdir(mount / DEMO_PROJECT)
    trips, entries = waited(linked, lambda: sh("ls", "-lR", mount / DEMO_PROJECT))
    listings = [e for e in entries if e["path"] == "/api/resolve"]
    # Once a second subdirectory is listed, the walk's next directories are listed ahead,
    # side by side (demo project: 11 listings in 10 round trips; strict, 32 in 24).
    assert trips < len(listings), entries


def test_rm_and_rmdir_cost_one_and_two_round_trips(
    fresh: Callable[..., Mount], linked: Any
) -> None:
    mount = fresh(args=["--allow-delete", "--delete-reason", "test_data"])
    target = mount / DEMO_SES / "DWI"
    name = f"rt-{uuid.uuid4().hex[:8]}"
    (target / f"{name}.txt").write_bytes(b"gone\n")
    os.mkdir(mount / DEMO_PROJECT / name)
    os.listdir(target)
    os.listdir(mount / DEMO_PROJECT)
    trips, entries = waited(linked, lambda: os.unlink(target / f"{name}.txt"))
    assert trips == 1, entries
    trips, entries = waited(linked, lambda: os.rmdir(mount / DEMO_PROJECT / name))
    # Whether it is empty (its listing), then the delete.
    assert trips == 2, entries


def test_mv_onto_an_existing_file_is_three_round_trips_and_four_on_a_real_core(
    fresh: Callable[..., Mount], linked: Any, strict: bool
) -> None:
    mount = fresh(args=["--allow-delete", "--delete-reason", "test_data"])
    target = mount / DEMO_SES / "DWI"
    name = f"rt-{uuid.uuid4().hex[:8]}"
    (target / f"{name}.new").write_bytes(b"new\n")
    (target / f"{name}.txt").write_bytes(b"old\n")
    os.listdir(target)
    trips, entries = waited(
        linked, lambda: os.rename(target / f"{name}.new", target / f"{name}.txt")
    )
    # The source's bytes (a 302 and storage on a real core), their upload under the new
    # name, then the source's delete: each waits for the one before.
    assert trips == (4 if strict else 3), entries
    assert (target / f"{name}.txt").read_bytes() == b"new\n"


def test_mv_of_a_container_directory_is_one_round_trip(
    fresh: Callable[..., Mount], linked: Any
) -> None:
    mount = fresh()
    name = f"rt-{uuid.uuid4().hex[:8]}"
    os.mkdir(mount / DEMO_PROJECT / name)
    os.listdir(mount / DEMO_PROJECT)
    trips, entries = waited(
        linked, lambda: os.rename(mount / DEMO_PROJECT / name, mount / DEMO_PROJECT / f"{name}-b")
    )
    assert trips == 1, entries
