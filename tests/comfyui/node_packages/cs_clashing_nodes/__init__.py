"""A custom node package that defines comfystream's frame node name: ours must run, and the clash show."""


class NotOurLoadTensor:
    CATEGORY = "comfystream-test"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {}}

    def run(self):
        raise RuntimeError("the clashing LoadTensor ran")


class CSTestOnlyHere:
    CATEGORY = "comfystream-test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {}}

    def run(self):
        return (7,)


NODE_CLASS_MAPPINGS = {"LoadTensor": NotOurLoadTensor, "CSTestOnlyHere": CSTestOnlyHere}
