"""The API's pages and events parsed without managedFields, and whole when not as expected."""

from __future__ import annotations

from typing import Any

import orjson

from ocps_jobs.backends.kubernetes.wire import loads, without_managed_fields

MANAGED = [
    {
        "manager": "kube-controller-manager",
        "operation": "Update",
        "fieldsType": "FieldsV1",
        # keys that look like the markers, escaped inside strings or prefixed
        "fieldsV1": {
            "f:metadata": {"f:ownerReferences": {'k:{"uid":"4a5b"}': {}}},
            "f:spec": {'k:{"name":"spec"}': {".": {}}},
        },
    }
]


def pod(name: str, managed: bool = True) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "annotations": {"note": '"],"spec":{'}}
    if managed:
        metadata["managedFields"] = MANAGED
    return {
        "metadata": metadata,
        "spec": {"containers": [{"name": "job", "args": ['},"spec":']}]},
        "status": {"phase": "Running"},
    }


def expected(item: dict[str, Any]) -> dict[str, Any]:
    metadata = {k: v for k, v in item["metadata"].items() if k != "managedFields"}
    return {**item, "metadata": metadata}


def test_a_page_loses_every_objects_managed_fields_and_nothing_else() -> None:
    items = [pod("a"), pod("b", managed=False), pod("c")]
    page = {"kind": "PodList", "metadata": {"resourceVersion": "9"}, "items": items}
    data = orjson.dumps(page)
    assert len(without_managed_fields(data)) < len(data)
    assert loads(data) == {**page, "items": [expected(item) for item in items]}


def test_an_event_loses_its_objects_managed_fields() -> None:
    event = {"type": "MODIFIED", "object": {"kind": "Pod", "apiVersion": "v1", **pod("a")}}
    parsed = loads(orjson.dumps(event))
    assert parsed["object"]["metadata"] == expected(pod("a"))["metadata"]
    assert parsed["object"]["spec"] == pod("a")["spec"]


def test_another_shape_is_parsed_whole() -> None:
    # managedFields not directly followed by the object's spec: nothing is cut
    odd = [
        {"metadata": {"name": "a", "managedFields": MANAGED}, "status": {}},
        {"metadata": {"name": "b", "managedFields": MANAGED}, "spec": {}},
    ]
    data = orjson.dumps({"items": odd})
    assert without_managed_fields(data) is data
    assert loads(data) == {"items": odd}
    plain = orjson.dumps({"items": [pod("x", managed=False)]})
    assert without_managed_fields(plain) is plain
