"""A newcomer's mistakes with the ComfyUI API get answers that say what to do, against a real server:
JSON with a syntax error (where it breaks), a workflow saved from the editor (the format to send
and how to get it), a node this server lacks (how to get it here), LoadImage with no image."""

from __future__ import annotations

import json

import pytest

from tests.jobs.conftest import JobsServer
from tests.polling import wait_for

UI_WORKFLOW = {
    "last_node_id": 2,
    "last_link_id": 1,
    "nodes": [
        {
            "id": 1,
            "type": "LoadImage",
            "widgets_values": ["example.png", "image"],
            "outputs": [{"links": [1]}],
        },
        {"id": 2, "type": "PreviewImage", "inputs": [{"name": "images", "type": "IMAGE", "link": 1}]},
    ],
    "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    "version": 0.4,
}


@pytest.mark.asyncio(loop_scope="package")
async def test_json_syntax_errors_say_line_and_column(jobs_server: JobsServer, no_leaks):
    body = '{\n  "prompt": {\n    "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"},}\n  }\n}'
    status, answer = await jobs_server.call("POST", "/prompt", data=body.encode())
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_json"
    assert answer["error"]["details"].startswith("not valid JSON at line 3, column "), answer
    status, answer = await jobs_server.call("POST", "/tasks", data=b'{"prompt": {"1": 1,}}')
    assert status == 400 and "line 1, column 20" in json.dumps(answer), answer
    # A prompt given as a JSON string: the same words.
    status, answer = await jobs_server.call("POST", "/prompt", json={"prompt": '{"1": {"class_type": "X",}}'})
    assert status == 400 and "not valid JSON at line 1, column" in answer["error"]["details"], answer


@pytest.mark.asyncio(loop_scope="package")
async def test_an_editor_workflow_is_converted_and_runs(jobs_server: JobsServer, no_leaks):
    """A workflow saved from the editor (UI format) is taken as its Export (API) would be; the input
    folder was empty, so the server's sample example.png is there for LoadImage."""
    prompt_id = await jobs_server.queue_prompt(UI_WORKFLOW)
    entry = await wait_for(lambda: _finished(jobs_server, prompt_id), what="the converted workflow to run")
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert entry["prompt"][2] == {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    assert entry["outputs"]["2"]["images"][0]["type"] == "temp"
    # One it cannot convert (subgraphs) says which format to send and how to get it.
    for path in ("/prompt", "/tasks"):
        status, answer = await jobs_server.call(
            "POST", path, json={"prompt": {**UI_WORKFLOW, "definitions": {"subgraphs": [{"id": "s"}]}}}
        )
        assert status == 400 and "Export (API)" in json.dumps(answer), answer


async def _finished(jobs_server: JobsServer, prompt_id: str) -> dict | None:
    entry = await jobs_server.history(prompt_id)
    return (
        entry
        if entry.get("status", {}).get("completed") is not None
        and entry.get("outputs") is not None
        and entry["status"].get("status_str")
        else None
    )


@pytest.mark.asyncio(loop_scope="package")
async def test_a_missing_node_says_how_to_get_it(jobs_server: JobsServer, no_leaks):
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}}}
    status, answer = await jobs_server.call("POST", "/prompt", json={"prompt": prompt})
    assert status == 400 and answer["error"]["type"] == "missing_node_type", answer
    assert (
        answer["error"]["message"]
        == "Node 'CheckpointLoaderSimple' not found. The custom node may not be installed."
    )
    details = answer["error"]["details"]
    assert "--workspace DIR" in details and "--custom-nodes" in details, details


@pytest.mark.asyncio(loop_scope="package")
async def test_load_image_without_an_image_is_a_validation_error(jobs_server: JobsServer, no_leaks):
    for inputs in ({}, {"image": ""}):
        prompt = {
            "1": {"class_type": "LoadImage", "inputs": inputs},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        }
        status, answer = await jobs_server.call("POST", "/prompt", json={"prompt": prompt})
        assert status == 400, answer
        assert answer["error"]["type"] == "prompt_outputs_failed_validation"
        said = [e["details"] for e in answer["node_errors"]["1"]["errors"]]
        assert any("no image chosen: put one in the input folder" in d for d in said), said
        assert not any("positional argument" in d for d in said), said


def test_the_sample_image_goes_only_into_an_empty_input_folder(tmp_path) -> None:
    from server.jobs import SAMPLE_IMAGE, place_sample_image

    empty, mine = tmp_path / "empty", tmp_path / "mine"
    empty.mkdir()
    mine.mkdir()
    (mine / "cat.jpg").write_bytes(b"not really a jpeg")
    place_sample_image(empty)
    place_sample_image(mine)
    assert (empty / "example.png").read_bytes() == SAMPLE_IMAGE.read_bytes()
    assert sorted(p.name for p in mine.iterdir()) == ["cat.jpg"]
