// Formatting for an operator's eye: short ids, durations, rates, and the current step in words.

export const shortId = (id, n = 8) => (id && id.length > n + 2 ? `${id.slice(0, n)}…` : id || '');

export function duration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return '–';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} min`;
}

export const fixed = (value, digits = 1) =>
  value == null || !Number.isFinite(Number(value)) ? '–' : Number(value).toFixed(digits);

export const percent = (fraction) => `${Math.round(Math.max(0, Math.min(1, fraction || 0)) * 100)}%`;

export function clockTime(ms) {
  if (!ms) return '';
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

// What a node is doing, in words (the seed's NODE_STEP_NAMES); other types get their name split.
export const NODE_STEP_NAMES = {
  KSampler: 'Sampling',
  KSamplerAdvanced: 'Sampling',
  SamplerCustom: 'Sampling',
  SamplerCustomAdvanced: 'Sampling',
  VAEDecode: 'Decoding image',
  VAEEncode: 'Encoding image',
  SaveImage: 'Saving image',
  PreviewImage: 'Preparing preview',
  CLIPTextEncode: 'Encoding prompt',
  CheckpointLoaderSimple: 'Loading model',
  LoraLoader: 'Loading LoRA',
  LoadImage: 'Loading image',
  ImageScale: 'Scaling image',
  ImageInvert: 'Inverting image',
  LoadTensor: 'Reading frame',
  SaveTensor: 'Writing frame',
  EmptyLatentImage: 'Preparing latent',
  UpscaleModelLoader: 'Loading upscaler',
  ImageUpscaleWithModel: 'Upscaling',
};

export function stepName(classType) {
  if (!classType) return 'Working';
  if (NODE_STEP_NAMES[classType]) return NODE_STEP_NAMES[classType];
  const words = classType
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .replace(/([A-Z]+)([A-Z][a-z])/g, '$1 $2')
    .replace(/[_-]+/g, ' ')
    .trim();
  return words.charAt(0).toUpperCase() + words.slice(1).toLowerCase();
}
