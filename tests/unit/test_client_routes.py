"""The requests FlywheelClient sends to real sites (issue 11): paged lists, the routes of
analysis inputs and of names holding '/', delete reasons, FastAPI errors, and where the
key may go on a redirect. HTTP is mocked with `responses`."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from fwfs.client import FlywheelClient
from fwfs.config import ClientConfig
from fwfs.errors import FwfsError, NotFound, RemoteError

SECRET = "routes-test-secret-7Kp"
API = "https://fw.example.org:443/api"


@pytest.fixture
def client() -> Iterator[FlywheelClient]:
    config = ClientConfig.from_api_key(f"fw.example.org:{SECRET}", retries=0)
    with FlywheelClient(config) as c:
        yield c


@pytest.fixture
def server() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock() as mock:
        yield mock


def query(call: responses.Call) -> dict[str, list[str]]:
    return parse_qs(urlsplit(str(call.request.url)).query)


# -- paging ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"), [("list_groups", "groups"), ("list_projects", "projects")]
)
def test_top_level_lists_page_by_250_until_an_empty_page(
    server: responses.RequestsMock, client: FlywheelClient, method: str, path: str
) -> None:
    # A core without the `pagination` feature answers bare lists: only an empty page ends.
    page1 = [{"_id": f"g{i:03}"} for i in range(250)]
    server.get(f"{API}/{path}", json=page1)
    server.get(f"{API}/{path}", json=[{"_id": "g250"}])
    server.get(f"{API}/{path}", json=[])
    items = getattr(client, method)()
    assert [g["_id"] for g in items] == [g["_id"] for g in page1] + ["g250"]
    asked = [query(call) for call in server.calls]
    assert all(q["limit"] == ["250"] for q in asked)
    assert "after_id" not in asked[0]
    assert asked[1]["after_id"] == ["g249"] and asked[2]["after_id"] == ["g250"]


def page(ids: list[str], total: int) -> dict[str, object]:
    return {"count": len(ids), "total": total, "results": [{"_id": i} for i in ids]}


def ids(n: int, start: int = 0) -> list[str]:
    return [f"g{i:04}" for i in range(start, start + n)]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("list_groups", "groups"),
        ("list_projects", "projects"),
        ("list_children", "projects/p1/analyses"),
    ],
)
def test_a_page_that_holds_its_total_is_the_whole_list_in_one_request(
    server: responses.RequestsMock, client: FlywheelClient, method: str, path: str
) -> None:
    server.get(f"{API}/{path}", json=page(ids(7), total=7))
    args = ("project", "p1", "analysis") if method == "list_children" else ()
    items = getattr(client, method)(*args)
    assert [g["_id"] for g in items] == ids(7)
    (call,) = server.calls
    features = call.request.headers["x-accept-feature"].split(",")
    assert "pagination" in features and "subject-container" in features
    assert query(call) == {"limit": ["250"]}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # `total` counts the whole list on every page (the sandbox).
        ((ids(250), 300), (ids(50, 250), 300)),
        # `total` counts what is left after the cursor.
        ((ids(250), 300), (ids(50, 250), 50)),
        # A site capping pages at 100 whatever the limit.
        ((ids(100), 150), (ids(50, 100), 150)),
    ],
    ids=["whole-total", "remaining-total", "capped-pages"],
)
def test_pages_stop_as_soon_as_their_totals_prove_the_list_complete(
    server: responses.RequestsMock,
    client: FlywheelClient,
    first: tuple[list[str], int],
    second: tuple[list[str], int],
) -> None:
    server.get(f"{API}/groups", json=page(*first))
    server.get(f"{API}/groups", json=page(*second))
    items = client.list_groups()
    assert [g["_id"] for g in items] == first[0] + second[0]
    assert len(server.calls) == 2  # no empty page asked for
    assert query(server.calls[1])["after_id"] == [first[0][-1]]


def test_a_page_short_of_its_total_keeps_paging(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    # 750 items, `total` counting what is left: 500 after the first page is not the end.
    server.get(f"{API}/groups", json=page(ids(250), 750))
    server.get(f"{API}/groups", json=page(ids(250, 250), 500))
    server.get(f"{API}/groups", json=page(ids(250, 500), 250))
    assert len(client.list_groups()) == 750
    assert len(server.calls) == 3


def test_a_malformed_page_is_an_error(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    server.get(f"{API}/groups", json={"count": 1, "total": 1, "results": {"_id": "g"}})
    with pytest.raises(RemoteError, match="array of objects") as caught:
        client.list_groups()
    assert caught.value.errno == errno.EIO


def test_only_list_calls_ask_for_pages(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    server.get(f"{API}/projects/p1", json={"_id": "p1"})
    client.get("project", "p1")
    assert "pagination" not in server.calls[0].request.headers["x-accept-feature"]


def test_a_site_that_ignores_after_id_is_an_error_not_an_endless_list(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    server.get(f"{API}/groups", json=[{"_id": "a"}, {"_id": "b"}])
    server.get(f"{API}/groups", json=[{"_id": "a"}, {"_id": "b"}])
    with pytest.raises(RemoteError, match="cursor did not advance") as caught:
        client.list_groups()
    assert caught.value.errno == errno.EIO
    assert len(server.calls) == 2


# -- routes ----------------------------------------------------------------------------

ANALYSIS = f"{API}/analyses/an1"


def test_analysis_inputs_are_read_through_the_inputs_route(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    url = f"{ANALYSIS}/inputs/T1.nii.gz"
    server.get(url, status=206, body=b"abcd", headers={"Content-Range": "bytes 0-3/9"})
    server.get(url, body=b"whole")
    server.get(f"{url}/info", json={"name": "T1.nii.gz", "info": {"a": 1}})
    assert client.read_range("analysis", "an1", "T1.nii.gz", 0, 4, group="inputs") == b"abcd"
    assert b"".join(client.stream_file("analysis", "an1", "T1.nii.gz", group="inputs")) == (
        b"whole"
    )
    assert client.file_info("analysis", "an1", "T1.nii.gz", group="inputs")["info"] == {"a": 1}
    # Outputs (and every other container's files) stay on files/.
    assert client.file_url_path("analysis", "an1", "T1.nii.gz") == "/analyses/an1/files/T1.nii.gz"
    assert client.file_url_path("acquisition", "a1", "x", group="inputs") == (
        "/acquisitions/a1/files/x"
    )


def test_a_name_with_a_slash_goes_by_file_id(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    name = "dicom/IM0001.dcm"
    download = f"{API}/files/f1/download"
    server.get(download, status=206, body=b"DICM", headers={"Content-Range": "bytes 128-131/900"})
    server.get(f"{API}/files/f1/zip_info", json={"members": []})
    server.get(f"{API}/files/f1", json={"name": name, "info": {}})
    server.get(download, body=b"member bytes")
    got = client.read_range("acquisition", "a1", name, 128, 132, version=3, file_id="f1")
    assert got == b"DICM"
    assert query(server.calls[0]) == {"version": ["3"], "view": ["true"]}
    assert client.zip_info("acquisition", "a1", name, version=3, file_id="f1") == {"members": []}
    assert query(server.calls[1]) == {"version": ["3"]}
    assert client.file_info("acquisition", "a1", name, file_id="f1")["name"] == name
    member = client.read_zip_member("acquisition", "a1", name, "a/b", version=3, file_id="f1")
    assert member == b"member bytes"
    assert query(server.calls[3]) == {"version": ["3"], "member": ["a/b"]}


def test_a_plain_name_stays_on_the_name_route_even_with_a_file_id(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    url = f"{API}/acquisitions/a1/files/scan.zip"
    server.get(url, json={"members": []})
    server.get(f"{url}/info", json={"name": "scan.zip"})
    assert client.zip_info("acquisition", "a1", "scan.zip", file_id="f1") == {"members": []}
    assert query(server.calls[0]) == {"info": ["true"]}
    assert client.file_info("acquisition", "a1", "scan.zip", file_id="f1") == {"name": "scan.zip"}


# -- deletes and errors ----------------------------------------------------------------


def test_deletes_send_the_reason_when_given(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    server.delete(f"{API}/acquisitions/a1/files/x.dcm", json={"deleted": 1})
    server.delete(f"{API}/sessions/s1", body="")
    server.delete(f"{API}/sessions/s2", body="")
    client.delete_file("acquisition", "a1", "x.dcm", reason="duplicate_data")
    client.delete_container("session", "s1", reason="test_data")
    client.delete_container("session", "s2")
    assert query(server.calls[0]) == {"delete_reason": ["duplicate_data"]}
    assert query(server.calls[1]) == {"delete_reason": ["test_data"]}
    assert query(server.calls[2]) == {}


def test_a_fastapi_detail_is_shown_when_there_is_no_message(
    server: responses.RequestsMock, client: FlywheelClient
) -> None:
    detail = [{"loc": ["query", "delete_reason"], "msg": "field required", "type": "missing"}]
    server.delete(f"{API}/sessions/s1", status=422, json={"detail": detail})
    server.delete(f"{API}/sessions/s2", status=404, json={"detail": "Session s2 not found"})
    with pytest.raises(FwfsError) as caught:
        client.delete_container("session", "s1")
    assert "HTTP 422" in str(caught.value)
    assert "query.delete_reason: field required" in str(caught.value)
    assert caught.value.server_message == "query.delete_reason: field required"
    with pytest.raises(NotFound, match="Session s2 not found"):
        client.delete_container("session", "s2")


# -- redirects -------------------------------------------------------------------------

FILE = f"{API}/projects/p1/files/scan.nii.gz"
PARTIAL = {"Content-Range": "bytes 0-3/8"}


@pytest.mark.parametrize(
    "storage",
    [
        "https://fw.example.org:9443/storage/obj?exp=1&sig=abc",  # same host, another port
        "https://fw.example.org/storage/obj?sig=abc",  # same origin (443), not the API
        "https://fw.example.org:443/apiary/obj?sig=abc",  # a path that only starts like it
        "http://fw.example.org/api/projects/p1/files/scan.nii.gz?sig=a",  # another scheme
    ],
)
def test_the_key_never_follows_a_redirect_out_of_the_api(
    server: responses.RequestsMock, client: FlywheelClient, storage: str
) -> None:
    server.get(FILE, status=302, headers={"Location": storage})
    server.get(storage.split("?")[0], status=206, body=b"abcd", headers=PARTIAL)
    assert client.read_range("project", "p1", "scan.nii.gz", 0, 4) == b"abcd"
    first, second = (call.request.headers for call in server.calls)
    assert first["Authorization"] == f"scitran-user {SECRET}"
    assert "Authorization" not in second
    assert second["Range"] == "bytes=0-3"


def test_the_sandbox_storage_port_on_loopback_gets_no_key(server: responses.RequestsMock) -> None:
    config = ClientConfig.from_api_key(f"127.0.0.1:8443:{SECRET}", retries=0)
    storage = "https://127.0.0.1:8444/blob/f1?exp=99&sig=ff"
    server.get(
        "https://127.0.0.1:8443/api/files/f1/download", status=302, headers={"Location": storage}
    )
    server.get("https://127.0.0.1:8444/blob/f1", body=b"data")
    with FlywheelClient(config) as client:
        assert b"".join(client.stream_file("acquisition", "a1", "d/x", file_id="f1")) == b"data"
    assert "Authorization" not in server.calls[1].request.headers
