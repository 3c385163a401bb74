"""A node that passes its frame through and says something about it in its `ui`, as a captioning
or a scoring node of a live workflow would: the stream's data channel carries what it says."""


class FrameMean:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"images": ("IMAGE",)}}

    def run(self, images):
        return {"ui": {"text": [f"mean {float(images.mean()):.4f}"]}, "result": (images,)}


NODE_CLASS_MAPPINGS = {"FrameMean": FrameMean}
