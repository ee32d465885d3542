"""The test database speaks the Realtime Database REST protocol, checked over plain HTTP.

Every expectation here comes from the protocol's documented rules, not from narrate's code, so
a misunderstanding shared by narrate.database and the test server cannot hide behind both.
With FIREBASE_DATABASE_EMULATOR_HOST set these run against the official emulator, which checks
the test server's rules themselves.
"""

from __future__ import annotations

import json
import time

import pytest
from support.rtdb_server import RTDBTarget


def test_a_put_replaces_the_location_and_answers_with_what_it_stored(rtdb: RTDBTarget) -> None:
    rtdb.rest("PUT", "users/jack", {"first": "Jack", "last": "Sparrow", "age": 40})
    answer = rtdb.request("PUT", "users/jack", {"first": "Jacques", "ship": {"name": "Pearl"}})
    assert answer.status == 200
    assert answer.body == {"first": "Jacques", "ship": {"name": "Pearl"}}
    assert rtdb.rest("GET", "users") == {"jack": {"first": "Jacques", "ship": {"name": "Pearl"}}}
    assert rtdb.rest("GET", "users/jack/ship/name") == "Pearl"
    assert rtdb.rest("GET", "users/nobody") is None
    # numbers are doubles: a whole one reads back without its fraction
    rtdb.rest("PUT", "n", 2.0)
    assert rtdb.request("GET", "n").raw == b"2"


def test_null_and_empty_objects_store_nothing_and_an_emptied_parent_disappears(
    rtdb: RTDBTarget,
) -> None:
    rtdb.rest("PUT", "a", {"b": {}, "c": None, "d": {"e": {"f": {}}}})
    assert rtdb.rest("GET", "a") is None
    rtdb.rest("PUT", "books", {"x": {"title": "X"}, "y": {"title": "Y", "year": 1900}})
    rtdb.rest("DELETE", "books/x/title")
    assert rtdb.rest("GET", "books") == {"y": {"title": "Y", "year": 1900}}
    rtdb.rest("PATCH", "books/y", {"title": None, "year": None})
    assert rtdb.rest("GET", "books") is None
    assert rtdb.rest("GET", "") is None
    rtdb.rest("PUT", "books/z", {"title": "Z"})
    rtdb.rest("PUT", "books/z", {})  # writing an empty object deletes
    assert rtdb.rest("GET", "books") is None


def test_writing_below_a_primitive_turns_it_into_an_object(rtdb: RTDBTarget) -> None:
    rtdb.rest("PUT", "a", "text")
    rtdb.rest("PUT", "a/b/c", 1)
    assert rtdb.rest("GET", "a") == {"b": {"c": 1}}
    rtdb.rest("PUT", "p", 5)
    rtdb.rest("DELETE", "p/q")  # deleting below a primitive leaves it
    assert rtdb.rest("GET", "p") == 5


def test_a_multi_path_patch_sets_each_path_whole_and_keeps_everything_else(
    rtdb: RTDBTarget,
) -> None:
    rtdb.rest("PUT", "", {"books": {"a": {"title": "A", "meta": {"x": 1, "y": 2}}, "b": {"n": 1}}})
    answer = rtdb.request("PATCH", "books", {"a/meta": {"z": 3}, "b/n": None, "c/title": "C"})
    assert answer.status == 200
    assert answer.body == {"a/meta": {"z": 3}, "b/n": None, "c/title": "C"}
    assert rtdb.rest("GET", "books") == {
        "a": {"title": "A", "meta": {"z": 3}},  # an object at a path replaces, never merges
        "c": {"title": "C"},
    }


@pytest.mark.parametrize(
    "update",
    [{"a": {"x": 1}, "a/x": 2}, {"a/b": 1, "a/b/c": 2}, {"a/b": 1, "a//b/": 2}],
    ids=["parent-child", "deep", "same-path"],
)
def test_a_patch_whose_paths_overlap_is_refused_whole(rtdb: RTDBTarget, update: dict) -> None:
    rtdb.rest("PUT", "kept", 1)
    answer = rtdb.request("PATCH", "", {"fresh": 1, **update})
    assert answer.status == 400 and "error" in answer.body
    assert rtdb.rest("GET", "") == {"kept": 1}


def test_a_patch_needs_an_object(rtdb: RTDBTarget) -> None:
    assert rtdb.request("PATCH", "a", "text").status == 400


def test_server_values_resolve_on_the_server_clock_once_per_request(rtdb: RTDBTarget) -> None:
    before = int(time.time() * 1000)
    stamp = {".sv": "timestamp"}
    answer = rtdb.request("PATCH", "", {"a/at": stamp, "b/at": stamp, "c": [stamp]})
    after = int(time.time() * 1000)
    stored = rtdb.rest("GET", "")
    assert before <= stored["a"]["at"] <= after
    assert stored["a"]["at"] == stored["b"]["at"] == stored["c"][0]  # one clock reading
    assert answer.body["a/at"] == stored["a"]["at"]  # the answer holds the resolved value
    rtdb.rest("PUT", "count", 5)
    rtdb.rest("PATCH", "", {"count": {".sv": {"increment": 2}}, "new": {".sv": {"increment": 3}}})
    assert (rtdb.rest("GET", "count"), rtdb.rest("GET", "new")) == (7, 3)
    assert rtdb.request("PUT", "x", {".sv": "yesterday"}).status == 400


def test_etags_make_put_and_delete_conditional(rtdb: RTDBTarget) -> None:
    rtdb.rest("PUT", "lease", 100)
    read = rtdb.request("GET", "lease", headers={"X-Firebase-ETag": "true"})
    assert read.body == 100 and read.etag
    assert rtdb.request("GET", "lease").etag is None  # only when asked for

    won = rtdb.request("PUT", "lease", 200, headers={"if-match": read.etag})
    assert (won.status, won.body) == (200, 200) and won.etag not in (None, read.etag)
    lost = rtdb.request("PUT", "lease", 300, headers={"if-match": read.etag})
    assert (lost.status, lost.body, lost.etag) == (412, 200, won.etag)  # the current value
    assert rtdb.rest("GET", "lease") == 200

    missing = rtdb.request("GET", "nothing", headers={"X-Firebase-ETag": "true"})
    assert missing.body is None and missing.etag  # "no data" has an ETag too: create-if-absent
    assert rtdb.request("PUT", "nothing", 1, headers={"if-match": missing.etag}).status == 200
    assert rtdb.request("PUT", "nothing", 2, headers={"if-match": missing.etag}).status == 412

    assert rtdb.request("DELETE", "lease", headers={"if-match": read.etag}).status == 412
    assert rtdb.request("DELETE", "lease", headers={"if-match": won.etag}).status == 200
    assert rtdb.rest("GET", "lease") is None
    unchanged = rtdb.request("GET", "nothing", headers={"if-none-match": missing.etag})
    assert unchanged.status == 200  # it changed since
    current = rtdb.request("GET", "nothing", headers={"X-Firebase-ETag": "true"}).etag
    assert rtdb.request("GET", "nothing", headers={"if-none-match": current}).status == 304


def test_a_patch_takes_no_etag(rtdb: RTDBTarget) -> None:
    read = rtdb.request("GET", "a", headers={"X-Firebase-ETag": "true"})
    assert rtdb.request("PATCH", "a", {"b": 1}, headers={"if-match": read.etag}).status == 400
    assert rtdb.request("PATCH", "a", {"b": 1}, headers={"X-Firebase-ETag": "true"}).status == 400
    assert rtdb.rest("GET", "a") is None


def test_print_silent_answers_204_without_a_body(rtdb: RTDBTarget) -> None:
    for method, value in (("PUT", {"b": 1}), ("PATCH", {"c": 2}), ("GET", None)):
        answer = rtdb.request(method, "a", value, params={"print": "silent"})
        assert (answer.status, answer.raw) == (204, b"")
    assert rtdb.rest("GET", "a") == {"b": 1, "c": 2}


def test_shallow_reads_only_the_keys(rtdb: RTDBTarget) -> None:
    rtdb.rest("PUT", "books", {"a": {"long": "x" * 1000}, "b": 7})
    assert rtdb.request("GET", "books", params={"shallow": "true"}).body == {"a": True, "b": True}
    assert rtdb.request("GET", "books/b", params={"shallow": "true"}).body == 7
    bad = rtdb.request("GET", "books", params={"shallow": "true", "orderBy": '"$key"'})
    assert bad.status == 400


def test_arrays_are_stored_as_objects_and_read_back_as_arrays_when_dense(rtdb: RTDBTarget) -> None:
    rtdb.rest("PUT", "list", ["a", "b", None, "d"])
    assert rtdb.rest("GET", "list") == ["a", "b", None, "d"]
    assert rtdb.rest("GET", "list/3") == "d"
    rtdb.rest("PUT", "sparse", {"0": "a", "7": "b"})  # 7 >= 2 * 2 keys: stays an object
    assert rtdb.rest("GET", "sparse") == {"0": "a", "7": "b"}


QUEUE = {
    "9": {"status": "requested", "n": 3},
    "123": {"status": "requested", "n": 1},
    "100001": {"status": "requested", "n": 2},
    "a": {"status": "requested", "n": 2},
    "b": {"status": "ready", "n": 0},
    "c": {"n": 5},
}


def query(rtdb: RTDBTarget, **params: object) -> object:
    answer = rtdb.request(
        "GET", "books", params={k: json.dumps(v) for k, v in params.items()} if params else None
    )
    assert answer.status == 200, answer.body
    return answer.body


def test_queries_filter_by_a_child_in_the_databases_order(rtdb: RTDBTarget) -> None:
    rtdb.rest("PUT", "books", QUEUE)
    requested = query(rtdb, orderBy="status", equalTo="requested")
    assert set(requested) == {"9", "123", "100001", "a"}
    # integer keys order numerically before string keys
    first = query(rtdb, orderBy="status", equalTo="requested", limitToFirst=2)
    assert set(first) == {"9", "123"}
    # a "value","key" bound starts at that key among equal values
    bound = rtdb.request(
        "GET",
        "books",
        params={"orderBy": '"status"', "startAt": '"requested","123"', "endAt": '"requested"'},
    )
    assert set(bound.body) == {"123", "100001", "a"}
    assert set(query(rtdb, orderBy="n", startAt=2, endAt=3)) == {"9", "100001", "a"}
    # a missing child orders first, as null
    assert set(query(rtdb, orderBy="status", limitToFirst=1)) == {"c"}
    assert set(query(rtdb, orderBy="$key", limitToLast=2)) == {"b", "c"}


def test_filters_without_order_by_are_refused(rtdb: RTDBTarget) -> None:
    answer = rtdb.request("GET", "books", params={"equalTo": '"requested"'})
    assert answer.status == 400
    answer = rtdb.request("GET", "books", params={"orderBy": "status"})  # not JSON
    assert answer.status == 400


@pytest.mark.parametrize(
    "path",
    ["books/a.b", "books/$x", "books/a#", "books/[0]", "x" * 769],
    ids=["dot", "dollar", "hash", "brackets", "769-bytes"],
)
def test_keys_the_database_forbids_are_refused(rtdb: RTDBTarget, path: str) -> None:
    assert rtdb.request("PUT", path, 1).status == 400
    assert rtdb.request("PUT", "books", {path.rsplit("/", 1)[-1]: 1}).status == 400
    assert rtdb.rest("GET", "") is None


def test_data_deeper_than_32_levels_is_refused(rtdb: RTDBTarget) -> None:
    deep: object = 1
    for _ in range(33):
        deep = {"k": deep}
    assert rtdb.request("PUT", "", deep).status == 400
    assert rtdb.request("PUT", "", deep["k"]).status == 200  # type: ignore[index]


def test_rest_paths_end_in_json(rtdb: RTDBTarget) -> None:
    assert rtdb.request("GET", "", raw_path="/books").status == 404
    rtdb.rest("PUT", "books/a", 1)
    assert rtdb.request("GET", "", raw_path="/books/.json").body == {"a": 1}


def test_post_adds_a_child_under_a_new_id_that_sorts_after_earlier_ones(rtdb: RTDBTarget) -> None:
    names = [rtdb.request("POST", "log", {"n": n}).body["name"] for n in range(5)]
    assert len(set(names)) == 5 and all(len(n) == 20 for n in names)
    assert names == sorted(names)
    assert [rtdb.rest("GET", f"log/{name}/n") for name in names] == list(range(5))
