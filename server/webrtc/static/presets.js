// Prompts the page offers; any API-format workflow can be pasted into the JSON box instead.
export const PRESETS = {
  invert: {
    label: "Invert (default)",
    prompt: {
      "1": { class_type: "LoadTensor", inputs: {} },
      "2": { class_type: "ImageInvert", inputs: { image: ["1", 0] } },
      "3": { class_type: "SaveTensor", inputs: { images: ["2", 0] } },
    },
  },
  passthrough: {
    label: "Pass through",
    prompt: {
      "1": { class_type: "LoadTensor", inputs: {} },
      "2": { class_type: "SaveTensor", inputs: { images: ["1", 0] } },
    },
  },
};
