"""Validation: every ComfyUI error type, with ComfyUI's messages, details and extra_info."""

from __future__ import annotations

import json

import pytest

from comfystream.engine import (
    NodeRegistry,
    PromptValidationError,
    compile_prompt,
    validate_prompt,
)
from comfystream.nodes import build_registry


class Source:
    RETURN_TYPES = ("IMAGE", "INT", "STRING,INT", "*")
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {}}

    def run(self):
        return (None, 1, "a", None)


class Sink:
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {"value": ("INT", {"min": 0, "max": 10})},
            "optional": {
                "any_in": ("*",),
                "union_in": ("FLOAT,INT",),
                "mode": ("COMBO", {"options": ["a", "b"]}),
                "flag": ("BOOLEAN", {"default": False}),
                "name": ("STRING", {}),
            },
        }

    def run(self, **kwargs):
        return ()


class Picky(Sink):
    @classmethod
    def VALIDATE_INPUTS(cls, value):  # noqa: N802
        if value == 3:
            return "three is not allowed"
        if value == 4:
            return False
        if value == 5:
            raise RuntimeError("validator blew up")
        return True


class Raising(Sink):
    OUTPUT_NODE = False
    RETURN_TYPES = ("INT",)

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        raise RuntimeError("schema broken")


@pytest.fixture(scope="module")
def reg() -> NodeRegistry:
    r = build_registry()
    for cls in (Source, Sink, Picky, Raising):
        r.register(cls.__name__, cls, source="test")
    return r


def sink(**inputs):
    return {"class_type": "Sink", "inputs": {"value": 1, **inputs}}


def errors_of(result, node_id):
    return result.node_errors[node_id]["errors"]


def test_valid_prompt_and_parse_forms(reg):
    prompt = {"1": {"class_type": "Source", "inputs": {}}, "2": sink(any_in=["1", 0])}
    for form in (prompt, json.dumps(prompt), {"prompt": prompt}, json.dumps({"prompt": prompt})):
        result = validate_prompt(form, reg)
        assert result.ok and result.error is None and result.node_errors == {} and result.outputs == ["2"]


def test_invalid_prompt(reg):
    result = validate_prompt("{not json", reg)
    assert not result.ok
    assert result.error["type"] == "invalid_prompt"
    assert "not valid JSON" in result.error["details"]
    result = validate_prompt({"1": {"class_type": "Sink", "inputs": [1, 2]}}, reg)
    assert result.error["type"] == "invalid_prompt"


def test_missing_and_unknown_class_type(reg):
    result = validate_prompt({"7": {"inputs": {}, "_meta": {"title": "My node"}}}, reg)
    assert result.error == {
        "type": "missing_node_type",
        "message": "Node 'My node' has no class_type. The workflow may be corrupted or a custom node is missing.",
        "details": "Node ID '#7'",
        "extra_info": {"node_id": "7", "class_type": None, "node_title": "My node"},
    }
    result = validate_prompt({"3": {"class_type": "NoSuchNode", "inputs": {}}}, reg)
    assert result.error == {
        "type": "missing_node_type",
        "message": "Node 'NoSuchNode' not found. The custom node may not be installed.",
        "details": "Node ID '#3'",
        "extra_info": {"node_id": "3", "class_type": "NoSuchNode", "node_title": "NoSuchNode"},
    }


def test_no_outputs(reg):
    result = validate_prompt({"1": {"class_type": "Source", "inputs": {}}}, reg)
    assert result.to_comfy() == {
        "error": {
            "type": "prompt_no_outputs",
            "message": "Prompt has no outputs",
            "details": "",
            "extra_info": {},
        },
        "node_errors": {},
    }


def test_required_input_missing(reg):
    result = validate_prompt({"1": {"class_type": "Sink", "inputs": {}}}, reg)
    assert result.error["type"] == "prompt_outputs_failed_validation"
    assert result.error["message"] == "Prompt outputs failed validation"
    assert result.error["details"] == "Required input is missing: value"
    assert result.node_errors == {
        "1": {
            "errors": [
                {
                    "type": "required_input_missing",
                    "message": "Required input is missing",
                    "details": "value",
                    "extra_info": {"input_name": "value"},
                }
            ],
            "dependent_outputs": ["1"],
            "class_type": "Sink",
        }
    }


def test_bad_linked_input(reg):
    result = validate_prompt({"1": sink(any_in=["1", 0, 5])}, reg)
    (err,) = errors_of(result, "1")
    assert err["type"] == "bad_linked_input"
    assert err["message"] == "Bad linked input, must be a length-2 list of [node_id, slot_index]"
    assert err["extra_info"]["received_value"] == ["1", 0, 5]
    assert err["extra_info"]["input_config"] == ("*", {})


def test_return_type_mismatch_and_type_rules(reg):
    prompt = {"1": {"class_type": "Source", "inputs": {}}, "2": sink(union_in=["1", 0])}
    (err,) = errors_of(validate_prompt(prompt, reg), "2")
    assert err["type"] == "return_type_mismatch"
    assert err["message"] == "Return type mismatch between linked nodes"
    assert err["details"] == "union_in, received_type(IMAGE) mismatch input_type(FLOAT,INT)"
    assert err["extra_info"]["received_type"] == "IMAGE" and err["extra_info"]["linked_node"] == ["1", 0]
    # INT into FLOAT,INT; STRING,INT into INT (overlap); * from and into anything
    ok = {
        "1": {"class_type": "Source", "inputs": {}},
        "2": sink(union_in=["1", 1], value=["1", 2], any_in=["1", 0]),
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 3]}},
        "4": {"class_type": "SaveTensor", "inputs": {"images": ["3", 0]}},
    }
    assert validate_prompt(ok, reg).ok


def test_invalid_input_type_and_coercion(reg):
    (err,) = errors_of(validate_prompt({"1": sink(value="abc")}, reg), "1")
    assert err["type"] == "invalid_input_type"
    assert err["message"] == "Failed to convert an input value to a INT value"
    assert err["details"] == "value, abc, invalid literal for int() with base 10: 'abc'"
    assert err["extra_info"]["received_value"] == "abc"
    # coerced before the range check: "7" -> 7 is fine and the plan sees an int
    result = validate_prompt({"1": sink(value="7", flag=1, name=12)}, reg)
    assert result.ok
    assert result.prompt["1"]["inputs"] == {"value": 7, "flag": True, "name": "12"}
    # "12" coerces to 12, then is too big
    (err,) = errors_of(validate_prompt({"1": sink(value="12")}, reg), "1")
    assert err["type"] == "value_bigger_than_max" and err["extra_info"]["received_value"] == 12


def test_min_and_max(reg):
    (err,) = errors_of(validate_prompt({"1": sink(value=-1)}, reg), "1")
    assert err == {
        "type": "value_smaller_than_min",
        "message": "Value -1 smaller than min of 0",
        "details": "value",
        "extra_info": {
            "input_name": "value",
            "input_config": ("INT", {"min": 0, "max": 10}),
            "received_value": -1,
        },
    }
    (err,) = errors_of(validate_prompt({"1": sink(value=11)}, reg), "1")
    assert err["message"] == "Value 11 bigger than max of 10"
    # a FLOAT range on a real node: ImageBlur's sigma 0.1..10
    prompt = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 0.05}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }
    result = validate_prompt(prompt, reg)
    (err,) = errors_of(result, "2")
    assert err["message"] == "Value 0.05 smaller than min of 0.1"
    assert result.node_errors["2"]["dependent_outputs"] == ["3"]


def test_value_not_in_list(reg):
    prompt = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {
            "class_type": "ImageBlend",
            "inputs": {"image1": ["1", 0], "image2": ["1", 0], "blend_factor": 0.5, "blend_mode": "lighten"},
        },
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }
    (err,) = errors_of(validate_prompt(prompt, reg), "2")
    assert err["type"] == "value_not_in_list" and err["message"] == "Value not in list"
    assert (
        err["details"]
        == "blend_mode: 'lighten' not in ['normal', 'multiply', 'screen', 'overlay', 'soft_light', 'difference']"
    )
    assert err["extra_info"]["received_value"] == "lighten"
    # the ["COMBO", {"options": [...]}] form
    (err,) = errors_of(validate_prompt({"1": sink(mode="c")}, reg), "1")
    assert err["details"] == "mode: 'c' not in ['a', 'b']"


def test_value_not_in_long_list(reg):
    class Many(Sink):
        @classmethod
        def INPUT_TYPES(cls):  # noqa: N802
            return {"required": {"pick": ([f"m{i}" for i in range(30)],)}}

    r = build_registry()
    r.register("Many", Many, source="test")
    (err,) = errors_of(validate_prompt({"1": {"class_type": "Many", "inputs": {"pick": "zz"}}}, r), "1")
    assert err["details"] == "pick: 'zz' not in (list of length 30)"
    assert err["extra_info"]["input_config"] is None


def test_custom_validation(reg):
    result = validate_prompt({"1": {"class_type": "Picky", "inputs": {"value": 3}}}, reg)
    assert errors_of(result, "1") == [
        {
            "type": "custom_validation_failed",
            "message": "Custom validation failed for node",
            "details": "value - three is not allowed",
            "extra_info": {"input_name": "value"},
        }
    ]
    result = validate_prompt({"1": {"class_type": "Picky", "inputs": {"value": 4}}}, reg)
    assert errors_of(result, "1")[0]["details"] == "value"
    # a VALIDATE_INPUTS that takes `value` skips the built-in range check for it
    assert validate_prompt({"1": {"class_type": "Picky", "inputs": {"value": 99}}}, reg).ok


def test_validate_inputs_with_input_types_skips_type_check(reg):
    seen = []

    class TypeAware(Sink):
        @classmethod
        def VALIDATE_INPUTS(cls, input_types):  # noqa: N802
            seen.append(input_types)
            return True

    r = build_registry()
    r.register("Source", Source, source="test")
    r.register("TypeAware", TypeAware, source="test")
    prompt = {
        "1": {"class_type": "Source", "inputs": {}},
        "2": {"class_type": "TypeAware", "inputs": {"value": 1, "union_in": ["1", 0]}},
    }
    assert validate_prompt(prompt, r).ok  # IMAGE into FLOAT,INT is the node's call
    assert seen == [{"union_in": "IMAGE"}]


def test_exception_during_validation(reg):
    result = validate_prompt({"1": {"class_type": "Picky", "inputs": {"value": 5}}}, reg)
    (err,) = errors_of(result, "1")
    assert err["type"] == "exception_during_validation"
    assert err["message"] == "Exception when validating node"
    assert err["details"] == "validator blew up"
    assert err["extra_info"]["exception_type"] == "RuntimeError"
    assert isinstance(err["extra_info"]["traceback"], list)


def test_exception_during_inner_validation(reg):
    prompt = {"1": {"class_type": "Raising", "inputs": {}}, "2": sink(any_in=["1", 0])}
    result = validate_prompt(prompt, reg)
    (err,) = errors_of(result, "1")
    assert err["type"] == "exception_during_inner_validation"
    assert err["message"] == "Exception when validating inner node"
    assert err["details"] == "schema broken"
    assert err["extra_info"]["input_name"] == "any_in" and err["extra_info"]["linked_node"] == ["1", 0]
    assert result.node_errors["1"]["dependent_outputs"] == ["2"]
    assert "2" not in result.node_errors  # downstream of a failure: invalid, but no errors of its own


def test_dangling_links(reg):
    # from the output node itself: exception_during_validation, with a clear message
    (err,) = errors_of(validate_prompt({"1": sink(any_in=["99", 0])}, reg), "1")
    assert err["type"] == "exception_during_validation"
    assert err["details"] == "input 'any_in' of node 1 links to node '99', which is not in the prompt"
    # from an inner node: exception_during_inner_validation on that node
    prompt = {
        "1": {"class_type": "Source", "inputs": {}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 7]}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }
    (err,) = errors_of(validate_prompt(prompt, reg), "2")
    assert err["type"] == "exception_during_inner_validation"
    assert "links to output 7 of node 1 (Source), which has 4 output(s)" in err["details"]


def test_dependency_cycle(reg):
    prompt = {
        "1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }
    result = validate_prompt(prompt, reg)
    assert not result.ok
    for node_id in ("1", "2"):
        (err,) = errors_of(result, node_id)
        assert err["type"] == "dependency_cycle" and err["message"] == "Dependency cycle detected"
        assert err["extra_info"]["cycle_nodes"] == ["2", "1"]
    assert (
        result.node_errors["1"]["errors"][0]["details"]
        == "2 (ImageInvert) -> 1 (ImageInvert) -> 2 (ImageInvert)"
    )
    with pytest.raises(PromptValidationError) as info:
        compile_prompt(prompt, reg)
    assert info.value.result.node_errors.keys() == {"1", "2"}


def test_one_good_output_is_enough(reg):
    prompt = {"1": sink(value=1), "2": sink(value=50)}
    result = validate_prompt(prompt, reg)
    assert result.ok and result.outputs == ["1"]
    assert result.node_errors["2"]["errors"][0]["type"] == "value_bigger_than_max"


def test_validation_errors_flat_form(reg):
    result = validate_prompt({"1": sink(mode="c")}, reg)
    assert result.validation_errors() == [
        {
            "node_id": "1",
            "node_type": "Sink",
            "error_type": "value_not_in_list",
            "message": "Value not in list",
            "details": "mode: 'c' not in ['a', 'b']",
            "input_name": "mode",
            "received_value": "c",
            "valid_options": ["a", "b"],
        }
    ]


def test_validate_never_mutates_the_callers_prompt(reg):
    prompt = {"1": sink(value="7")}
    validate_prompt(prompt, reg)
    assert prompt["1"]["inputs"]["value"] == "7"
