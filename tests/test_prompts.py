import json

import pytest

from comfystream.prompts import (
    DEFAULT_PROMPT,
    PromptFormatError,
    normalize_prompts,
    normalize_prompts_or_default,
)


def test_all_accepted_forms_give_the_same_prompt():
    as_json = json.dumps(DEFAULT_PROMPT)
    forms = [
        DEFAULT_PROMPT,
        as_json,
        [DEFAULT_PROMPT],
        [as_json],
        {"prompt": DEFAULT_PROMPT},
        json.dumps([as_json]),
    ]
    for form in forms:
        assert normalize_prompts(form) == [DEFAULT_PROMPT], form


def test_two_prompts_keep_their_order():
    other = {"1": {"class_type": "LoadTensor", "inputs": {}}}
    assert normalize_prompts([DEFAULT_PROMPT, other]) == [DEFAULT_PROMPT, other]


def test_result_is_a_copy():
    out = normalize_prompts(DEFAULT_PROMPT)[0]
    out["1"]["inputs"]["x"] = 1
    assert "x" not in DEFAULT_PROMPT["1"]["inputs"]


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("{not json", "not valid JSON"),
        (42, "JSON object"),
        ([], "empty"),
        ({}, "no nodes"),
        ({"1": 5}, "node '1'"),
    ],
)
def test_bad_forms_are_clear_errors(bad, fragment):
    with pytest.raises(PromptFormatError, match=fragment):
        normalize_prompts(bad)


def test_no_prompt_means_default():
    assert normalize_prompts_or_default(None) == [DEFAULT_PROMPT]
    assert normalize_prompts_or_default([]) == [DEFAULT_PROMPT]


# A workflow as the editor saves it: LoadImage (its upload button adds a widget value) -> a Reroute ->
# ImageBlur (two widgets) -> a bypassed ImageInvert -> SaveImage, with a note and a muted node.
UI_WORKFLOW = {
    "last_node_id": 7,
    "last_link_id": 5,
    "nodes": [
        {
            "id": 1,
            "type": "LoadImage",
            "mode": 0,
            "inputs": [],
            "widgets_values": ["cat.png", "image"],
            "outputs": [
                {"name": "IMAGE", "type": "IMAGE", "links": [1]},
                {"name": "MASK", "type": "MASK", "links": []},
            ],
        },
        {
            "id": 2,
            "type": "Reroute",
            "mode": 0,
            "inputs": [{"name": "", "type": "*", "link": 1}],
            "outputs": [{"name": "", "type": "IMAGE", "links": [2]}],
        },
        {
            "id": 3,
            "type": "ImageBlur",
            "mode": 0,
            "title": "Soft",
            "widgets_values": [5, 2.5],
            "inputs": [{"name": "image", "type": "IMAGE", "link": 2}],
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [3]}],
        },
        {
            "id": 4,
            "type": "ImageInvert",
            "mode": 4,
            "inputs": [{"name": "image", "type": "IMAGE", "link": 3}],
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [4]}],
        },
        {
            "id": 5,
            "type": "SaveImage",
            "mode": 0,
            "widgets_values": ["shot"],
            "inputs": [{"name": "images", "type": "IMAGE", "link": 4}],
            "outputs": [],
        },
        {"id": 6, "type": "Note", "mode": 0, "widgets_values": ["a note"]},
        {
            "id": 7,
            "type": "PreviewImage",
            "mode": 2,
            "inputs": [{"name": "images", "type": "IMAGE", "link": 5}],
        },
    ],
    "links": [
        [1, 1, 0, 2, 0, "IMAGE"],
        [2, 2, 0, 3, 0, "IMAGE"],
        [3, 3, 0, 4, 0, "IMAGE"],
        [4, 4, 0, 5, 0, "IMAGE"],
        [5, 3, 0, 7, 0, "IMAGE"],
    ],
    "groups": [],
    "version": 0.4,
}


def test_a_ui_workflow_converts_as_the_editors_export_does():
    from comfystream.nodes import build_registry
    from comfystream.prompts import registry_input_types, ui_to_api

    api = ui_to_api(UI_WORKFLOW, registry_input_types(build_registry()))
    assert api == {
        "1": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
        "3": {
            "class_type": "ImageBlur",
            "inputs": {"image": ["1", 0], "blur_radius": 5, "sigma": 2.5},
            "_meta": {"title": "Soft"},
        },
        "5": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "shot"}},
    }
    # Where a prompt is taken with the nodes at hand it is converted; a list of them too.
    assert normalize_prompts([UI_WORKFLOW], registry_input_types(build_registry())) == [api]


def test_a_ui_workflow_without_the_nodes_at_hand_is_refused_saying_what_to_send():
    with pytest.raises(PromptFormatError, match=r"UI format.*Export \(API\)"):
        normalize_prompts(UI_WORKFLOW)
    with pytest.raises(PromptFormatError, match=r"subgraphs.*Export \(API\)"):
        from comfystream.prompts import ui_to_api

        ui_to_api({**UI_WORKFLOW, "definitions": {"subgraphs": [{"id": "x"}]}}, lambda _t: None)
