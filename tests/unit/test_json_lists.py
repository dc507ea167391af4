"""A list serialized one item at a time is byte for byte the list ``json_response`` writes."""

from __future__ import annotations

import pytest

from ocps_jobs.http.render import COMPACT_LIST_LENGTH, json_list_response, json_response, json_text


def _document(index: int) -> dict[str, object]:
    return {
        "jobId": f"job-{index}",
        "phase": "executing",
        "parameters": {"command": ["/bin/bash", "-c", 'echo \u00e9 "x"'], "environment": []},
        "results": [{"id": "YQ==", "uri": f"s3://b/{index}"}],
        "executionDuration": index,
        "errorSummary": {"message": None},
    }


@pytest.mark.parametrize("length", [0, 1, COMPACT_LIST_LENGTH, COMPACT_LIST_LENGTH + 1, 250])
def test_item_by_item_list_matches_whole_list(length: int) -> None:
    documents = [_document(index) for index in range(length)]
    whole = json_response(documents)
    by_item = json_list_response([json_text(document) for document in documents])
    assert by_item.get_data() == whole.get_data()
    assert by_item.mimetype == whole.mimetype == "application/json"
