"""A lookup of a deep path lists the directories below the one it lists first by guessing
their site paths from the names (fs/tree.py, `Tree.guessing`), side by side: never at the
price of a wrong listing, and at most one request more than going down one name at a time.

The baseline is the walk the kernel makes: one lookup per name, each of which lists only
the directory that holds it, so nothing is guessed. Both run on fresh models (empty
caches), against the default sandbox and its `--strict` twin (a real core's resolver: no
files of the children, permissions enforced). The SDK is the witness of what the site holds.
"""

from __future__ import annotations

import errno
import uuid
from collections.abc import Callable
from typing import Any

import flywheel
import pytest
from writekit import DEMO_PROJECT, errno_of, names

from fwfs.fs import FlywheelFS

pytestmark = pytest.mark.timeout(120)

MakeModel = Callable[..., FlywheelFS]


@pytest.fixture(params=("default", "strict"))
def site(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("demo_site" if request.param == "default" else "strict_site")


@pytest.fixture
def sdk(site: Any) -> Any:
    return site.client()


@pytest.fixture
def make_model(site: Any, new_model: MakeModel) -> MakeModel:
    """`make_model(key=Ada's)`: a fresh read-only model of `site`, closed after the test."""

    def make(key: str | None = None) -> FlywheelFS:
        return new_model(key or site.api_key, verify=site.verify, metadata_ttl=300)

    return make


def requests_of(site: Any, action: Callable[[], object]) -> list[str]:
    mark = site.quiet_mark()
    try:
        action()
    finally:
        log = site.requests_since(mark)
    return sorted(f"{e['method']} {e['path']}" for e in log)


def child(parent: Any, kind: str, label: str) -> Any:
    """The SDK's `kind` of `parent` labelled `label` (the oldest), by finders: its resolver
    paths do not reach subjects on a core that gates them (`--strict`)."""
    found = [c for c in getattr(parent, kind)() if c.label == label]
    return min(found, key=lambda c: c.id)


def acquisition(sdk: Any, subject: str, session: str, label: str) -> Any:
    ses = child(child(sdk.lookup(DEMO_PROJECT), "subjects", subject), "sessions", session)
    return child(ses, "acquisitions", label).reload()


def one_name_at_a_time(fs: FlywheelFS, path: str) -> Any:
    """What a lookup through the kernel does: each name of `path` in turn."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        fs.getattr("/".join(parts[:i]))
    return fs.getattr(path)


def same_lookup(site: Any, make_model: MakeModel, path: str, extra: int = 0) -> Any:
    """`path`'s attributes, looked up whole and one name at a time, each on a fresh model:
    the same answer, and at most `extra` requests more looked up whole."""
    whole, stepwise = make_model(), make_model()
    got: list[Any] = []
    asked = requests_of(site, lambda: got.append(whole.getattr(path)))
    baseline = requests_of(site, lambda: got.append(one_name_at_a_time(stepwise, path)))
    assert got[0] == got[1]
    assert len(baseline) <= len(asked) <= len(baseline) + extra, (asked, baseline)
    return got[0]


def test_a_deep_path_costs_the_requests_of_one_name_at_a_time(
    site: Any, make_model: MakeModel, sdk: Any
) -> None:
    path = f"{DEMO_PROJECT}/sub-01/ses-baseline/DWI/DWI.nii.gz"
    attr = same_lookup(site, make_model, path)
    dwi = acquisition(sdk, "sub-01", "ses-baseline", "DWI")
    assert attr.size == next(f.size for f in dwi.files if f.name == "DWI.nii.gz")


def test_the_suffixed_twin_of_a_session_gives_its_own_files(
    site: Any, make_model: MakeModel, sdk: Any
) -> None:
    # Two sessions labelled ses-baseline under sub-03: a path of that label resolves to
    # the oldest, whose name is plain; the other's name is suffixed.
    sessions = child(sdk.lookup(DEMO_PROJECT), "subjects", "sub-03").sessions()
    resolved = min(sessions, key=lambda s: s.id)
    other = next(s for s in sessions if s.id != resolved.id)
    for ses, name in ((other, f"ses-baseline ({other.id[-8:]})"), (resolved, "ses-baseline")):
        acq = ses.acquisitions()[0]
        expected = {f.name for f in acq.reload().files}
        path = f"{DEMO_PROJECT}/sub-03/{name}/{acq.label}"
        f = sorted(expected)[0]
        attr = same_lookup(site, make_model, f"{path}/{f}")
        assert attr.size == next(x.size for x in acq.files if x.name == f)
        fs = make_model()
        fs.getattr(f"{path}/{f}")
        assert fs.getxattr(f"{DEMO_PROJECT}/sub-03/{name}", "user.flywheel.id") == ses.id.encode()
        assert fs.getxattr(path, "user.flywheel.id") == acq.id.encode()
        assert names(fs, path) == expected


@pytest.fixture
def slashed(site: Any, sdk: Any) -> dict[str, Any]:
    """Two groups of our own: one with a project whose label holds `/`, the other with that
    project too and one labelled as the first's escaped name; a file four levels below
    each project, holding its label."""
    made: dict[str, Any] = {}
    for labels in (("A/B",), ("A/B", "A／B")):
        gid = f"fwfs-guess-{uuid.uuid4().hex[:8]}"
        sdk.add_group(flywheel.Group(gid, "guesses"))
        for label in labels:
            project = sdk.get_group(gid).add_project(label=label)
            acq = project.add_subject(label="s").add_session(label="x").add_acquisition(label="a")
            acq.upload_file(flywheel.FileSpec("f.txt", label.encode() * 3))
            made[f"{gid}/{label}"] = acq
        made["alone" if len(labels) == 1 else "twins"] = gid
    return made


def test_a_label_holding_a_slash_is_found_by_its_escaped_name(
    site: Any, make_model: MakeModel, slashed: dict[str, Any]
) -> None:
    gid = slashed["alone"]
    attr = same_lookup(site, make_model, f"{gid}/A／B/s/x/a/f.txt")
    assert attr.size == len(b"A/B" * 3)
    fs = make_model()
    acq = slashed[f"{gid}/A/B"]
    assert fs.getxattr(f"{gid}/A／B/s/x/a", "user.flywheel.id") == acq.id.encode()


def test_an_escaped_name_another_label_owns_gives_that_ones_files(
    site: Any, make_model: MakeModel, slashed: dict[str, Any]
) -> None:
    # The escaped name of `A/B` is the label of the other project: that one keeps it (a
    # site path of that name reaches it), `A/B` is suffixed. The guess unescapes the name,
    # reaches `A/B` and is kept under its id: wasted, not wrong.
    gid = slashed["twins"]
    listed = names(make_model(), gid)
    suffixed = next(n for n in listed if n != "A／B")
    assert suffixed.startswith("A／B (")
    for name, label in (("A／B", "A／B"), (suffixed, "A/B")):
        path = f"{gid}/{name}/s/x/a"
        # The guesses of the project's level and the two below it may miss.
        attr = same_lookup(site, make_model, f"{path}/f.txt", extra=3)
        assert attr.size == len(label.encode() * 3)
        fs = make_model()
        fs.getattr(f"{path}/f.txt")
        assert fs.getxattr(path, "user.flywheel.id") == slashed[f"{gid}/{label}"].id.encode()


def test_an_id_alias_on_the_way_is_passed_as_it_is(
    site: Any, make_model: MakeModel, sdk: Any
) -> None:
    project = sdk.lookup(DEMO_PROJECT)
    path = f"flywheel/<id:{project.id}>/sub-02/ses-followup/T1w/T1w.nii.gz"
    attr = same_lookup(site, make_model, path)
    t1w = acquisition(sdk, "sub-02", "ses-followup", "T1w")
    assert attr.size == next(f.size for f in t1w.files if f.name == "T1w.nii.gz")


def test_a_name_that_is_no_label_costs_one_request_more_at_most(
    site: Any, make_model: MakeModel
) -> None:
    path = f"{DEMO_PROJECT}/sub-01/no-such-session/T1w/T1w.nii.gz"
    whole, stepwise = make_model(), make_model()
    asked = requests_of(site, lambda: errno_of(lambda: whole.getattr(path)))
    baseline = requests_of(site, lambda: errno_of(lambda: one_name_at_a_time(stepwise, path)))
    assert errno_of(lambda: whole.getattr(path)) == errno.ENOENT
    assert len(asked) <= len(baseline) + 1, (asked, baseline)
    # The walk's listings stand: the session the guess missed is not there, the rest is.
    assert "ses-baseline" in names(whole, f"{DEMO_PROJECT}/sub-01")


def test_a_container_the_key_may_not_read_answers_as_before(
    strict_site: Any, new_model: MakeModel
) -> None:
    # The strict site only: the default one lets every key read everything.
    def make_model(key: str) -> FlywheelFS:
        return new_model(key, verify=strict_site.verify, metadata_ttl=300)

    ada = strict_site.client()
    hidden = f"Hidden {uuid.uuid4().hex[:6]}"
    project = ada.get_group("flywheel").add_project(label=hidden)
    project.add_subject(label="s").add_session(label="x").add_acquisition(label="a")
    grace = strict_site.project_member_api_key
    for path in (f"flywheel/{hidden}/s/x/a/f.txt", "radiology/p/s/x/a/f.txt"):
        whole, stepwise = make_model(grace), make_model(grace)
        assert errno_of(lambda: whole.getattr(path)) == errno.ENOENT  # noqa: B023
        assert errno_of(lambda: one_name_at_a_time(stepwise, path)) == errno.ENOENT  # noqa: B023
        # Her own project, through the same model, as she may read it.
        assert "sub-01" in names(whole, DEMO_PROJECT)
    assert ada.get_project(project.id).label == hidden
