"""Human step names for a task's progress (`currentStep`), by the class_type of the running node."""

from __future__ import annotations

NODE_STEP_NAMES: dict[str, str] = {
    # comfystream's built-in nodes
    "LoadTensor": "Reading the input frame...",
    "SaveTensor": "Writing the output frame...",
    "LoadImage": "Loading image...",
    "PrimaryInputLoadImage": "Loading image...",
    "SaveImage": "Saving image...",
    "PreviewImage": "Preparing preview...",
    "EmptyImage": "Creating image...",
    "ImageInvert": "Inverting image...",
    "ImageScale": "Resizing image...",
    "ImageScaleBy": "Resizing image...",
    "ImageCrop": "Cropping image...",
    "ImageFlip": "Flipping image...",
    "ImageRotate": "Rotating image...",
    "ImageBlend": "Blending images...",
    "ImageBlur": "Blurring image...",
    "ImageSharpen": "Sharpening image...",
    "ImageQuantize": "Quantizing colors...",
    "ImageCompositeMasked": "Compositing images...",
    "GetImageSize": "Measuring image...",
    # common ComfyUI nodes
    "CheckpointLoaderSimple": "Loading model...",
    "CheckpointLoader": "Loading model...",
    "UNETLoader": "Loading model...",
    "VAELoader": "Loading VAE...",
    "CLIPLoader": "Loading text encoder...",
    "DualCLIPLoader": "Loading text encoders...",
    "LoraLoader": "Loading LoRA...",
    "LoraLoaderModelOnly": "Loading LoRA...",
    "ControlNetLoader": "Loading ControlNet...",
    "ControlNetApply": "Applying ControlNet...",
    "ControlNetApplyAdvanced": "Applying ControlNet...",
    "CLIPTextEncode": "Encoding prompt...",
    "CLIPSetLastLayer": "Configuring text encoder...",
    "EmptyLatentImage": "Preparing latent image...",
    "EmptySD3LatentImage": "Preparing latent image...",
    "KSampler": "Sampling image...",
    "KSamplerAdvanced": "Sampling image...",
    "SamplerCustom": "Sampling image...",
    "SamplerCustomAdvanced": "Sampling image...",
    "VAEDecode": "Decoding image...",
    "VAEDecodeTiled": "Decoding image...",
    "VAEEncode": "Encoding image...",
    "VAEEncodeForInpaint": "Encoding image for inpainting...",
    "LatentUpscale": "Upscaling latent...",
    "LatentUpscaleBy": "Upscaling latent...",
    "UpscaleModelLoader": "Loading upscale model...",
    "ImageUpscaleWithModel": "Upscaling image...",
    "SetLatentNoiseMask": "Applying mask...",
    "LoadImageMask": "Loading mask...",
    "FluxGuidance": "Applying guidance...",
}

QUEUED_STEP = "Queued..."
STARTING_STEP = "Starting..."
COMPLETE_STEP = "Complete"
FAILED_STEP = "Failed"
INTERRUPTED_STEP = "Interrupted"
CANCELLED_STEP = "Cancelled"


def step_name(class_type: str | None) -> str:
    if not class_type:
        return "Processing..."
    return NODE_STEP_NAMES.get(class_type, f"Running {class_type}...")
