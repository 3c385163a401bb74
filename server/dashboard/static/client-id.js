// This tab's ComfyUI client id. A fresh one per page load, never shared through storage: a duplicated
// tab would otherwise inherit it, and one tab's jobs would be shown as another's.

function randomId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID().replace(/-/g, '');
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
}

export const clientId = randomId();
