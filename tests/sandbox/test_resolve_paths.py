"""`/resolve` and `/lookup` path elements, and one container's JSON wherever it appears.

The sandbox finds each path element with one query (by id, or the oldest with that label)
and builds the JSON of many containers at once; these are the rules that must hold
whichever way it is built.
"""

from __future__ import annotations

from typing import Any

import requests

PROJECT = "flywheel/Anxiety Study"


def api(site: Any, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(
        method, site.api_url + path, json=body, headers=site.headers(), timeout=30
    )


def resolve(site: Any, path: list[str]) -> requests.Response:
    return api(site, "POST", "/resolve", {"path": path})


def test_an_id_resolves_only_under_its_own_parent(demo_site: Any, fw: Any) -> None:
    sub01 = fw.lookup(f"{PROJECT}/sub-01")
    project = fw.lookup(PROJECT)
    other = next(p for p in fw.get_group("flywheel").projects() if p.id != project.id)
    ok = resolve(demo_site, ["flywheel", f"<id:{project.id}>", f"<id:{sub01.id}>"])
    assert ok.status_code == 200
    assert [n["_id"] for n in ok.json()["path"]] == ["flywheel", project.id, sub01.id]
    wrong = resolve(demo_site, ["flywheel", f"<id:{other.id}>", f"<id:{sub01.id}>"])
    assert wrong.status_code == 404
    # A session's id is not a subject's, even under the right project.
    ses = fw.lookup(f"{PROJECT}/sub-01/ses-baseline")
    assert (
        resolve(demo_site, ["flywheel", f"<id:{project.id}>", f"<id:{ses.id}>"]).status_code == 404
    )
    # Groups are named by id, and have no parent.
    assert resolve(demo_site, [f"<id:{project.id}>"]).status_code == 404
    assert resolve(demo_site, ["flywheel"]).json()["path"][0]["_id"] == "flywheel"


def test_a_duplicate_label_resolves_to_the_oldest(demo_site: Any, scratch_project: Any) -> None:
    first = scratch_project.add_subject(label="twin")
    second = scratch_project.add_subject(label="twin")
    assert first.id != second.id
    path = [scratch_project.group, f"<id:{scratch_project.id}>", "twin"]
    assert resolve(demo_site, path).json()["path"][-1]["_id"] == first.id
    assert api(demo_site, "POST", "/lookup", {"path": path}).json()["_id"] == first.id
    by_id = [*path[:-1], f"<id:{second.id}>"]
    assert resolve(demo_site, by_id).json()["path"][-1]["_id"] == second.id


def test_an_analysis_resolves_by_label_and_by_id(demo_site: Any, fw: Any) -> None:
    found = None
    for container in fw.lookup(PROJECT).sessions():
        container = container.reload()
        if container.analyses:
            found = container
            break
    assert found is not None, "the demo has a session with an analysis"
    analysis = found.analyses[0]
    base = ["flywheel", f"<id:{found.project}>", f"<id:{found.subject.id}>", f"<id:{found.id}>"]
    for element in (analysis.label, f"<id:{analysis.id}>"):
        answer = resolve(demo_site, [*base, "analyses", element])
        assert answer.status_code == 200
        assert answer.json()["path"][-1]["_id"] == analysis.id
    assert resolve(demo_site, [*base, "analyses", "no such analysis"]).status_code == 404


def test_a_container_is_the_same_json_alone_in_a_list_and_in_a_resolve(
    demo_site: Any, fw: Any
) -> None:
    subject = fw.lookup(f"{PROJECT}/sub-01")
    listed = api(demo_site, "GET", f"/subjects/{subject.id}/sessions").json()
    resolved = resolve(demo_site, ["flywheel", f"<id:{subject.project}>", f"<id:{subject.id}>"])
    children = [c for c in resolved.json()["children"] if c["container_type"] == "session"]
    assert len(listed) >= 2
    assert children == listed
    for doc in listed:
        alone = api(demo_site, "GET", f"/sessions/{doc['_id']}").json()
        assert alone == doc
        # What each session carries along: its subject, files, analyses with their inputs.
        assert alone["subject"]["_id"] == subject.id
        assert "files" in alone and "analyses" in alone
        for a in alone["analyses"]:
            assert a["parent"] == {"type": "session", "id": doc["_id"]}
            assert "inputs" in a and "files" not in a
