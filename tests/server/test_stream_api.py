"""The stream API over HTTP, against a real server, relay and workers: every endpoint, its bodies,
and its error cases (400 with the seed's body and ComfyUI's node_errors, 404, 409, 503)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stream_stack import INVERT_PROMPT, PASSTHROUGH_PROMPT, Stack

from server.http.keys import NODE_REGISTRY_KEY

NODES = Path(__file__).resolve().parent / "nodes"  # a custom node package that loads, one that fails

BLUR_PROMPT = {
    "1": {"class_type": "LoadTensor", "inputs": {}},
    "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 3, "sigma": 1.0}},
    "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
}
ERROR_KEYS = {"error", "message", "validation_errors", "node_errors"}
ITEM_KEYS = {"node_id", "node_type", "error_type", "message", "input_name", "received_value", "valid_options"}


def assert_error_body(body: dict) -> None:
    assert ERROR_KEYS <= set(body), body
    for item in body["validation_errors"]:
        assert ITEM_KEYS <= set(item), item


async def test_start_variants_and_config(stack: Stack) -> None:
    # No prompt: the default (invert), on a dedicated worker.
    data = await stack.start("s-default", {"width": 256, "height": 256})
    assert data["status"] == "success" and data["request_id"] == "s-default"
    assert data["message"] == "Stream s-default started successfully"
    cfg = data["config"]
    assert cfg["subscribe_url"] == f"{stack.relay}/s-default"
    assert (cfg["width"], cfg["height"]) == (256, 256)
    assert cfg["pipeline_type"] == "ProcessPoolPipeline"
    assert cfg["architecture"] == "dedicated_worker_per_stream"
    assert (cfg["dedicated_worker"], cfg["use_prompt_worker"]) == (True, False)
    assert (cfg["prompts_set"], cfg["prompt_count"]) == (False, 1)

    # The gateway's alias; the prompt-worker architecture with an array of two (one a JSON string).
    data = await stack.start(
        "s-multi",
        {
            "prompts": [INVERT_PROMPT, json.dumps(BLUR_PROMPT)],
            "dedicated_worker": False,
            "use_prompt_worker": True,
        },
        path="/live-video-to-video",
    )
    cfg = data["config"]
    assert (
        cfg["pipeline_type"] == "PromptWorkerPipeline" and cfg["architecture"] == "prompt_worker_per_prompt"
    )
    assert (cfg["prompts_set"], cfg["prompt_count"]) == (True, 2)

    status, listing = await stack.call("GET", "/streams")
    assert status == 200 and listing["count"] == 2 and listing["max_streams"] == 2
    assert {s["stream_id"] for s in listing["streams"]} == {"s-default", "s-multi"}
    assert {s["transport"] for s in listing["streams"]} == {"trickle"}

    # A third is over --max-streams: 503, and the running two are untouched.
    body = {
        **stack.urls("s-third"),
        "gateway_request_id": "s-third",
        "params": {"prompt": json.dumps(INVERT_PROMPT)},
    }
    status, err = await stack.call("POST", "/stream/start", json=body)
    assert status == 503, err
    assert_error_body(err)
    # The same id again: 409 (checked before capacity).
    status, err = await stack.call("POST", "/stream/start", json={**body, "gateway_request_id": "s-default"})
    assert status == 409 and "s-default" in err["message"]

    for name in ("s-default", "s-multi"):
        status, stopped = await stack.call("DELETE", f"/stream/{name}")
        assert status == 200 and stopped["request_id"] == name
        info = (await stack.call("GET", f"/stream/{name}"))[1]
        assert info["state"] == "stopped" and info["stop_reason"] == "stopped by DELETE"
    status, listing = await stack.call("GET", "/streams")
    assert listing["count"] == 0

    # Capacity is free again; a dict prompt, the flat POST /stream form, the shared pipeline.
    status, data = await stack.call(
        "POST",
        "/stream",
        json={
            **stack.urls("s-flat"),
            "stream_id": "s-flat",
            "width": 128,
            "height": 96,
            "prompts": PASSTHROUGH_PROMPT,
            "dedicated_worker": False,
        },
    )
    assert status == 200, data
    cfg = data["config"]
    assert (cfg["width"], cfg["height"], cfg["prompt_count"]) == (128, 96, 1)
    assert cfg["pipeline_type"] == "Pipeline" and cfg["architecture"] == "shared_pipeline"
    await stack.call("DELETE", "/stream/s-flat")


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        ("{not json", "Invalid JSON", None),
        ("[1, 2]", "Invalid request", None),
        # (no subscribe_url or publish_url is a stream without video in or out: allowed, as in BYOC)
        ({"params": {"max_framerate": 61}}, "Invalid request", "params.max_framerate"),
        ({"params": {"detect_out_resolution": "maybe"}}, "Invalid request", "params.detect_out_resolution"),
        ({"subscribe_url": "ftp://h/x", "publish_url": "http://h/y"}, "Invalid request", "subscribe_url"),
        ({"subscribe_url": 5, "publish_url": "http://h/y"}, "Invalid request", "subscribe_url"),
        ({"params": {"width": "wide"}}, "Invalid request", "params.width"),
        ({"params": {"width": 513, "height": 512}}, "Invalid request", "params.width"),
        ({"params": {"width": 8, "height": 512}}, "Invalid request", "params.width"),
        ({"params": {"height": 100000}}, "Invalid request", "params.height"),
        ({"params": {"dedicated_worker": "yes"}}, "Invalid request", "params.dedicated_worker"),
        ({"params": {"prompt": 12}}, "Invalid request", "params.prompt"),
        ({"params": {"prompt": "{not a prompt"}}, "Prompt validation failed", "prompt"),
        ({"params": {"prompts": "[1]"}}, "Prompt validation failed", "prompt"),
        ({"gateway_request_id": "a/b"}, "Invalid request", "gateway_request_id"),
    ],
)
async def test_start_rejects_bad_input(stack: Stack, body, error, field) -> None:
    if isinstance(body, dict):  # `...` removes a field
        full = {"subscribe_url": f"{stack.relay}/x", "publish_url": f"{stack.relay}/y", **body}
        body = json.dumps({k: v for k, v in full.items() if v is not ...})
    status, err = await stack.call(
        "POST", "/stream/start", data=body, headers={"Content-Type": "application/json"}
    )
    assert status == 400, err
    assert_error_body(err)
    assert err["error"] == error
    if field is not None:
        assert field in {i["input_name"] for i in err["validation_errors"]}, err
    assert (await stack.call("GET", "/streams"))[1]["count"] == 0


async def test_invalid_prompts_get_comfyui_node_errors(stack: Stack) -> None:
    bad_value = json.loads(json.dumps(BLUR_PROMPT))
    bad_value["2"]["inputs"]["blur_radius"] = 99
    status, err = await stack.call(
        "POST", "/stream/start", json={**stack.urls("p"), "params": {"prompt": json.dumps(bad_value)}}
    )
    assert status == 400
    assert_error_body(err)
    assert err["error"] == "Prompt validation failed"
    (item,) = err["validation_errors"]
    assert item["node_id"] == "2" and item["node_type"] == "ImageBlur"
    assert item["error_type"] == "value_bigger_than_max" and item["input_name"] == "blur_radius"
    assert item["received_value"] == 99
    # ComfyUI's own shapes beside it.
    assert err["node_errors"]["2"]["class_type"] == "ImageBlur"
    assert err["node_errors"]["2"]["errors"][0]["type"] == "value_bigger_than_max"
    assert err["comfy_error"]["type"] == "prompt_outputs_failed_validation"

    unknown = {**INVERT_PROMPT, "9": {"class_type": "NoSuchNode", "inputs": {}}}
    status, err = await stack.call(
        "POST", "/stream/start", json={**stack.urls("p"), "params": {"prompts": [unknown]}}
    )
    assert status == 400
    item = err["validation_errors"][0]
    assert (item["node_id"], item["node_type"], item["error_type"]) == (
        "9",
        "NoSuchNode",
        "missing_node_type",
    )

    missing = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }
    status, err = await stack.call(
        "POST", "/stream/start", json={**stack.urls("p"), "params": {"prompt": missing}}
    )
    assert status == 400
    assert {(i["input_name"], i["error_type"]) for i in err["validation_errors"]} == {
        ("blur_radius", "required_input_missing"),
        ("sigma", "required_input_missing"),
    }


async def test_unknown_stream_is_404_everywhere(stack: Stack) -> None:
    for method, path, body in [
        ("GET", "/stream/nope", None),
        ("DELETE", "/stream/nope", None),
        ("POST", "/stream/nope/update-prompts", {"prompt": INVERT_PROMPT}),
        ("POST", "/stream/nope/params", {"width": 256, "height": 256}),
        ("GET", "/stream/nope/worker", None),
        ("GET", "/stream/nope/workers", None),
        ("POST", "/stream/nope/restart-worker", None),
        ("POST", "/stream/nope/restart-workers", None),
        ("GET", "/stream/nope/workspace-info", None),
        ("POST", "/stream/stop", None),
        ("POST", "/stream/params", {"prompt": INVERT_PROMPT}),
    ]:
        status, err = await stack.call(method, path, json=body)
        assert status == 404, (method, path, err)
        assert_error_body(err)
    status, body = await stack.call("GET", "/stream/status")
    assert status == 200 and body["stream_count"] == 0 and body["processing_active"] is False


@pytest.mark.server_config(custom_nodes=[NODES])
async def test_running_stream_endpoints(stack: Stack) -> None:
    await stack.start("live", {"width": 128, "height": 128, "prompt": json.dumps(INVERT_PROMPT)})
    info = await stack.wait_state("live", {"running"})
    assert info["config"]["prompts_set"] is True and info["prompts_count"] == 1
    assert info["transport"] == "trickle"
    assert set(info["stats"]) >= {"received", "processed", "dropped", "published", "fps_in", "fps_out"}

    status, worker = await stack.call("GET", "/stream/live/worker")
    assert status == 200 and worker["pipeline_type"] == "ProcessPoolPipeline"
    w = worker["worker"]
    assert w["pid"] and w["pid"] > 0 and w["device"] == "cpu" and w["state"]
    assert set(w) >= {"pid", "device", "state", "uptime_s", "restarts", "frames_processed", "fps"}
    # Its resident memory: its own (heap) and shared (shared memory, files: libraries at least).
    assert set(w["memory"]) == {"rss", "private", "shared"}
    assert w["memory"]["private"] > 0 and w["memory"]["shared"] > 0
    assert w["memory"]["rss"] == w["memory"]["private"] + w["memory"]["shared"]
    text = (await stack.call("GET", "/metrics"))[1]
    for kind in ("rss", "private", "shared"):
        assert f'comfystream_worker_memory_bytes{{kind="{kind}",pid="{w["pid"]}",stream_id="live"}}' in text, kind
    alias = (await stack.call("GET", "/stream/live/workers"))[1]
    assert [x["pid"] for x in alias["workers"]] == [x["pid"] for x in worker["workers"]]

    status, ws = await stack.call("GET", "/stream/live/workspace-info")
    assert status == 200 and ws["success"] and ws["stream_id"] == "live"
    info = ws["workspace_info"]
    assert info["total_workers"] == 1
    assert set(info["config_keys"]) >= {"cwd", "disable_cuda_malloc", "gpu_only", "preview_method"}
    # No --workspace: it says so, and what the built-in engine loaded (--custom-nodes among it).
    assert info["engine"] == "builtin" and "no ComfyUI workspace" in info["message"]
    assert (info["workspace_path"], info["comfyui_version"], info["comfyui_nodes"]) == (None, None, 0)
    assert (
        info["nodes_loaded"] == len(stack.app[NODE_REGISTRY_KEY])
        and "WsScale" in stack.app[NODE_REGISTRY_KEY]
    )
    assert info["custom_node_dirs"] == [str(NODES)]
    packages = {p["name"]: p for p in info["custom_node_packages"]}
    assert set(packages) == {"ws_good_nodes", "ws_broken_nodes"}
    assert packages["ws_good_nodes"]["loaded"] and packages["ws_good_nodes"]["nodes"] == ["WsScale"]
    broken = packages["ws_broken_nodes"]
    assert not broken["loaded"] and "lacks" in broken["error"] and broken["nodes"] == []
    assert info["load_errors"] == {broken["path"]: broken["error"]}

    # Updates: a prompt, then prompts with parameters (new size, forced warmup).
    status, up = await stack.call(
        "POST", "/stream/live/update-prompts", json={"prompt": json.dumps(PASSTHROUGH_PROMPT)}
    )
    assert status == 200, up
    assert up["status"] == "success" and up["request_id"] == "live" and up["prompts_count"] == 1
    assert up["message"] == "Prompts updated for stream live"
    status, up = await stack.call(
        "POST",
        "/stream/live/update-prompts",
        json={"prompts": [INVERT_PROMPT], "parameters": {"width": 96, "height": 64, "warmup": True}},
    )
    assert status == 200, up
    assert up["parameters_updated"] is True and up["warmup_performed"] is True
    info = (await stack.call("GET", "/stream/live"))[1]
    assert (info["config"]["width"], info["config"]["height"]) == (96, 64)

    # Bad updates: 400, and the stream keeps running on its prompt.
    for body in (
        {"prompt": "{oops"},
        {"prompts": [{"1": {"class_type": "Nope", "inputs": {}}}]},
        {},
        {"parameters": {"width": 7}},
    ):
        status, err = await stack.call("POST", "/stream/live/update-prompts", json=body)
        assert status == 400, (body, err)
        assert_error_body(err)
    status, err = await stack.call(
        "POST", "/stream/live/update-prompts", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert status == 400 and err["error"] == "Invalid JSON"
    info = (await stack.call("GET", "/stream/live"))[1]
    assert info["state"] == "running" and (info["config"]["width"], info["config"]["height"]) == (96, 64)

    # The gateway's params form, per stream and BYOC (the only stream).
    status, up = await stack.call(
        "POST", "/stream/live/params", json={"prompt": json.dumps(PASSTHROUGH_PROMPT)}
    )
    assert status == 200 and up["prompts_count"] == 1
    status, up = await stack.call(
        "POST", "/stream/params", json={"prompts": [INVERT_PROMPT, PASSTHROUGH_PROMPT]}
    )
    assert status == 200 and up["prompts_count"] == 2
    status, err = await stack.call("POST", "/stream/params", json={"width": "x"})
    assert status == 400 and err["validation_errors"][0]["input_name"] == "width"

    status, st = await stack.call("GET", "/stream/status")
    assert status == 200 and st["stream_count"] == 1 and st["processing_active"] is True
    assert st["current_stream"]["stream_id"] == "live" and set(st["all_streams"]) == {"live"}

    old_pid = w["pid"]
    status, rs = await stack.call("POST", "/stream/live/restart-worker")
    assert status == 200 and rs["request_id"] == "live"
    new = (await stack.call("GET", "/stream/live/worker"))[1]["worker"]
    assert new["pid"] != old_pid and new["restarts"] >= 1
    status, rs = await stack.call("POST", "/stream/live/restart-workers")
    assert status == 200
    restarts = (await stack.call("GET", "/stream/live/worker"))[1]["worker"]["restarts"]
    metrics = (await stack.call("GET", "/metrics"))[1]
    assert f'comfystream_stream_worker_restarts_total{{stream_id="live"}} {float(restarts)}' in metrics
    assert restarts >= 2

    status, stopped = await stack.call("POST", "/stream/stop", json={})
    assert status == 200 and stopped["request_id"] == "live"
    info = (await stack.call("GET", "/stream/live"))[1]
    assert info["state"] == "stopped" and info["stop_reason"] == "stopped by the gateway"


async def test_health_metrics_openapi(stack: Stack) -> None:
    status, health = await stack.call("GET", "/health")
    assert status == 200 and health["status"] == "IDLE"  # pytrickle's states; no warm worker to wait for
    assert health["streams_active"] == 0 and health["max_streams"] == 2 and health["node_types"] > 3

    await stack.call("POST", "/stream/start", data=b"{", headers={"Content-Type": "application/json"})
    await stack.call("GET", "/stream/missing")
    await stack.start("m1", {"width": 64, "height": 64})
    assert (await stack.call("GET", "/health"))[1]["status"] == "OK"  # a stream runs
    status, text = await stack.call("GET", "/metrics")
    assert status == 200
    assert "comfystream_streams_active 1.0" in text
    assert 'comfystream_streams_started_total{architecture="dedicated_worker_per_stream"} 1.0' in text
    assert 'comfystream_stream_requests_rejected_total{status="400"} 1.0' in text
    assert 'comfystream_stream_requests_rejected_total{status="404"} 1.0' in text
    for name in (
        "comfystream_stream_fps",
        "comfystream_stream_frames_dropped_total",
        "comfystream_stream_worker_restarts_total",
    ):
        assert f'{name}{{stream_id="m1"}}' in text, name
    await stack.call("DELETE", "/stream/m1")
    text = (await stack.call("GET", "/metrics"))[1]
    assert "comfystream_streams_active 0.0" in text and 'stream_id="m1"' not in text

    status, doc = await stack.call("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    expected = {
        ("post", "/stream/start"),
        ("post", "/live-video-to-video"),
        ("post", "/stream"),
        ("get", "/stream/{id}"),
        ("delete", "/stream/{id}"),
        ("post", "/stream/{id}/update-prompts"),
        ("post", "/stream/{id}/params"),
        ("get", "/stream/{id}/worker"),
        ("get", "/stream/{id}/workers"),
        ("post", "/stream/{id}/restart-worker"),
        ("post", "/stream/{id}/restart-workers"),
        ("get", "/stream/{id}/workspace-info"),
        ("get", "/streams"),
        ("post", "/stream/stop"),
        ("post", "/stream/params"),
        ("get", "/stream/status"),
        ("get", "/health"),
        ("get", "/version"),
        ("get", "/app-version"),
        ("get", "/hardware/info"),
        ("get", "/hardware/stats"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
    }
    have = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert expected <= have, expected - have
    start = doc["paths"]["/stream/start"]["post"]
    ref = start["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    schema = doc["components"]["schemas"][ref]
    # every URL is optional (a BYOC stream may have no video in or out)
    assert {"subscribe_url", "publish_url", "data_url", "params"} <= set(schema["properties"])
    assert not schema.get("required")
    err_ref = start["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert {"validation_errors", "node_errors"} <= set(doc["components"]["schemas"][err_ref]["properties"])
    for ref_holder in json.dumps(doc).split('"$ref": "')[1:]:
        assert ref_holder.split('"')[0].rsplit("/", 1)[1] in doc["components"]["schemas"]
