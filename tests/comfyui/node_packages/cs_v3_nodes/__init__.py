"""A custom node package in ComfyUI's V3 style: a ComfyExtension with a hidden input and a validator."""

from comfy_api.latest import ComfyExtension, io


class CSTestV3Gain(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CSTestV3Gain",
            category="comfystream-test",
            inputs=[io.Image.Input("image"), io.Float.Input("gain", default=1.0, min=-10.0, max=10.0)],
            outputs=[io.Image.Output()],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, gain):
        if gain == 0:
            return "gain must not be 0"
        return True

    @classmethod
    def execute(cls, image, gain):
        return io.NodeOutput((image * gain).clamp(0.0, 1.0), ui={"node": [cls.hidden.unique_id]})


class _Extension(ComfyExtension):
    async def get_node_list(self):
        return [CSTestV3Gain]


async def comfy_entrypoint():
    return _Extension()
