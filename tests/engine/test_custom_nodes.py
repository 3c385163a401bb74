"""Custom node packages from folders, registry clashes, object_info, and the UI-prompt converter."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from comfystream.engine import ExecutionContext, NodeRegistry, compile_prompt
from comfystream.engine.convert import PromptConversionError, convert_prompt
from comfystream.nodes import build_registry

GOOD_INIT = """
from .ops import Brighten

NODE_CLASS_MAPPINGS = {"Brighten": Brighten}
NODE_DISPLAY_NAME_MAPPINGS = {"Brighten": "Brighten Image"}
"""

GOOD_OPS = """
class Brighten:
    CATEGORY = "custom/test"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "amount": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 1.0})}}

    def run(self, image, amount):
        return ((image + amount).clamp(0, 1),)
"""

SINGLE_MODULE = """
class Halve:
    CATEGORY = "custom/test"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        return (image * 0.5,)

NODE_CLASS_MAPPINGS = {"Halve": Halve}
"""

CLASHING = """
class ImageInvert:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "custom/test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        return (image,)

NODE_CLASS_MAPPINGS = {"ImageInvert": ImageInvert}
"""


@pytest.fixture
def nodes_dir(tmp_path):
    good = tmp_path / "good_pack"
    good.mkdir()
    (good / "__init__.py").write_text(GOOD_INIT)
    (good / "ops.py").write_text(GOOD_OPS)
    broken = tmp_path / "broken_pack"
    broken.mkdir()
    (broken / "__init__.py").write_text("import not_a_real_module_xyz\nNODE_CLASS_MAPPINGS = {}\n")
    (tmp_path / "halve.py").write_text(SINGLE_MODULE)
    (tmp_path / "no_mappings.py").write_text("X = 1\n")
    (tmp_path / "off_pack.disabled").mkdir()
    return tmp_path


def test_good_and_broken_packages(nodes_dir):
    registry = build_registry(custom_node_dirs=[str(nodes_dir)])
    assert "Brighten" in registry and "Halve" in registry
    assert registry.display_names["Brighten"] == "Brighten Image"
    assert registry.sources["Brighten"] == str(nodes_dir / "good_pack")
    ((source, error),) = registry.load_errors.items()
    assert source == str(nodes_dir / "broken_pack")
    assert "ModuleNotFoundError" in error and "not_a_real_module_xyz" in error
    # the built-ins are all still there
    assert "ImageInvert" in registry and "LoadTensor" in registry

    prompt = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "Brighten", "inputs": {"image": ["1", 0], "amount": 0.25}},
        "3": {"class_type": "Halve", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "SaveTensor", "inputs": {"images": ["3", 0]}},
    }
    result = compile_prompt(prompt, registry).execute_sync(
        ExecutionContext(frame=torch.full((1, 2, 2, 3), 0.5))
    )
    assert torch.allclose(result.frames[0], torch.full((1, 2, 2, 3), 0.375))


def test_missing_folder_is_reported(tmp_path):
    registry = build_registry(custom_node_dirs=[str(tmp_path / "nope")])
    assert list(registry.load_errors) == [str(tmp_path / "nope")]
    assert "ImageInvert" in registry


def test_clash_between_sources_is_reported_not_overwritten(tmp_path):
    (tmp_path / "clash.py").write_text(CLASHING)
    registry = build_registry(custom_node_dirs=[str(tmp_path)])
    from comfystream.nodes.image_ops import ImageInvert

    assert registry["ImageInvert"] is ImageInvert
    (conflict,) = registry.conflicts
    assert conflict.name == "ImageInvert" and conflict.kept_source == "comfystream"
    assert conflict.rejected_source == str(tmp_path / "clash.py")


def test_register_api():
    registry = NodeRegistry()

    class A:
        RETURN_TYPES = ()
        FUNCTION = "f"

        @classmethod
        def INPUT_TYPES(cls):  # noqa: N802
            return {}

    assert registry.register("A", A, display_name="Node A", source="comfyui")
    assert registry.register("A", A, source="comfyui")  # same again: fine
    assert not registry.register("A", type("B", (A,), {}), source="other")
    assert registry["A"] is A and len(registry.conflicts) == 1
    assert registry.register("A", type("C", (A,), {}), source="other", replace=True)
    with pytest.raises(TypeError):
        registry.register("X", object(), source="x")


def test_object_info_schema(registry):
    info = registry.object_info()
    assert set(info) == set(registry)
    blend = info["ImageBlend"]
    assert blend["input"]["required"]["blend_mode"][0] == [
        "normal",
        "multiply",
        "screen",
        "overlay",
        "soft_light",
        "difference",
    ]
    assert blend["input_order"] == {"required": ["image1", "image2", "blend_factor", "blend_mode"]}
    assert (
        blend["output"] == ("IMAGE",)
        and blend["output_is_list"] == [False]
        and blend["output_name"] == ("IMAGE",)
    )
    assert blend["name"] == "ImageBlend" and blend["display_name"] == "Image Blend"
    assert blend["output_node"] is False and blend["category"] == "image/postprocessing"
    assert info["SaveTensor"]["output_node"] is True
    assert info["GetImageSize"]["output_name"] == ("width", "height", "batch_size")
    assert info["LoadTensor"]["input"]["optional"]["timeout_seconds"][1]["default"] == 1.0
    for name, entry in info.items():
        assert {
            "input",
            "input_order",
            "output",
            "output_is_list",
            "output_name",
            "name",
            "display_name",
            "description",
            "python_module",
            "category",
            "output_node",
        } <= set(entry), name
    json.dumps(info)  # what GET /object_info serves


def test_convert_ui_prompt_for_streaming(registry):
    ui_prompt = {
        "10": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "11": {"class_type": "ImageBlur", "inputs": {"image": ["10", 0], "blur_radius": 1, "sigma": 1.0}},
        "12": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
    }
    streaming = convert_prompt(ui_prompt)
    assert streaming["10"] == {"class_type": "LoadTensor", "inputs": {}}
    assert streaming["12"] == {"class_type": "SaveTensor", "inputs": {"images": ["11", 0]}}
    assert ui_prompt["10"]["class_type"] == "LoadImage"  # the original is untouched
    result = compile_prompt(streaming, registry).execute_sync(ExecutionContext(frame=torch.rand(1, 8, 8, 3)))
    assert result.frames[0].shape == (1, 8, 8, 3)

    # with a primary input, other LoadImage nodes stay (one-shot images feeding the graph)
    primary = {
        "1": {"class_type": "PrimaryInputLoadImage", "inputs": {"image": "a.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "b.png"}},
        "3": {
            "class_type": "ImageBlend",
            "inputs": {"image1": ["1", 0], "image2": ["2", 0], "blend_factor": 0.5, "blend_mode": "normal"},
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
    }
    converted = convert_prompt(primary)
    assert converted["1"]["class_type"] == "LoadTensor" and converted["2"]["class_type"] == "LoadImage"
    assert converted["4"] == {"class_type": "SaveTensor", "inputs": {"images": ["3", 0]}}


@pytest.mark.parametrize(
    "prompt,message",
    [
        ({"1": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}}}, "missing input"),
        ({"1": {"class_type": "LoadImage", "inputs": {"image": "a"}}}, "missing output"),
        (
            {
                "1": {"class_type": "LoadImage", "inputs": {"image": "a"}},
                "2": {"class_type": "LoadImage", "inputs": {"image": "b"}},
                "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
            },
            "too many inputs",
        ),
        (
            {
                "1": {"class_type": "LoadImage", "inputs": {"image": "a"}},
                "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
                "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
            },
            "too many outputs",
        ),
    ],
)
def test_convert_rejects(prompt, message):
    with pytest.raises(PromptConversionError, match=message):
        convert_prompt(prompt)


def test_module_with_relative_imports_of_same_name_in_two_folders(tmp_path):
    for folder, amount in (("a", "0.1"), ("b", "0.2")):
        pack = tmp_path / folder / "pack"
        pack.mkdir(parents=True)
        (pack / "__init__.py").write_text(
            textwrap.dedent(
                f"""
                from .impl import make
                NODE_CLASS_MAPPINGS = {{"Add_{folder}": make({amount})}}
                """
            )
        )
        (pack / "impl.py").write_text(
            textwrap.dedent(
                """
                def make(amount):
                    class Add:
                        RETURN_TYPES = ("FLOAT",)
                        FUNCTION = "run"
                        @classmethod
                        def INPUT_TYPES(cls):
                            return {"required": {}}
                        def run(self):
                            return (amount,)
                    return Add
                """
            )
        )
    registry = build_registry(custom_node_dirs=[str(tmp_path / "a"), str(tmp_path / "b")])
    assert registry["Add_a"]().run() == (0.1,) and registry["Add_b"]().run() == (0.2,)
    assert registry.load_errors == {}
