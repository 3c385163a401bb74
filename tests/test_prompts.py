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
    forms = [DEFAULT_PROMPT, as_json, [DEFAULT_PROMPT], [as_json], {"prompt": DEFAULT_PROMPT}, json.dumps([as_json])]
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
    [("{not json", "not valid JSON"), (42, "JSON object"), ([], "empty"), ({}, "no nodes"), ({"1": 5}, "node '1'")],
)
def test_bad_forms_are_clear_errors(bad, fragment):
    with pytest.raises(PromptFormatError, match=fragment):
        normalize_prompts(bad)


def test_no_prompt_means_default():
    assert normalize_prompts_or_default(None) == [DEFAULT_PROMPT]
    assert normalize_prompts_or_default([]) == [DEFAULT_PROMPT]
