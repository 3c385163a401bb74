// The browser tab shows the running jobs: the title gets their count and aggregate progress, the
// favicon (drawn on a canvas) a ring filled to that progress with the count inside.

export const BASE_TITLE = 'comfystream';

/** Aggregate of the jobs (any objects with `status` and `progress` 0..1): the mean progress of the running ones. */
export function summarize(jobs) {
  const running = jobs.filter((j) => j.status === 'running');
  const pending = jobs.filter((j) => j.status === 'pending').length;
  const progress = running.length
    ? running.reduce((sum, j) => sum + Math.max(0, Math.min(1, j.progress || 0)), 0) / running.length
    : 0;
  return { running: running.length, pending, progress };
}

export function titleFor({ running, pending, progress }, base = BASE_TITLE) {
  if (running > 0) {
    const what = running === 1 ? '1 job' : `${running} jobs`;
    return `[${Math.floor(progress * 100)}%] ${what} running · ${base}`;
  }
  if (pending > 0) return `[${pending} queued] ${base}`;
  return base;
}

const COLORS = { bg: '#161a21', track: '#2f3744', ring: '#5b9cf6', idle: '#3fb97f', text: '#ffffff' };

/** Draws the favicon for `summary` on `canvas` (32x32) and returns it as a PNG data URL. */
export function drawFavicon(canvas, { running, progress }) {
  const size = 32;
  canvas.width = size;
  canvas.height = size;
  const ctx = canvas.getContext('2d');
  const c = size / 2;
  ctx.clearRect(0, 0, size, size);
  ctx.fillStyle = COLORS.bg;
  ctx.beginPath();
  ctx.arc(c, c, c, 0, Math.PI * 2);
  ctx.fill();
  ctx.lineWidth = 5;
  ctx.strokeStyle = COLORS.track;
  ctx.beginPath();
  ctx.arc(c, c, c - 4, 0, Math.PI * 2);
  ctx.stroke();
  if (running > 0) {
    ctx.strokeStyle = COLORS.ring;
    ctx.beginPath();
    ctx.arc(c, c, c - 4, -Math.PI / 2, -Math.PI / 2 + Math.PI * 2 * Math.max(0.02, progress));
    ctx.stroke();
    ctx.fillStyle = COLORS.text;
    ctx.font = `bold ${running > 9 ? 12 : 15}px system-ui, sans-serif`;
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    ctx.fillText(running > 99 ? '99' : String(running), c, c + 1);
  } else {
    ctx.fillStyle = COLORS.idle;
    ctx.beginPath();
    ctx.arc(c, c, 5, 0, Math.PI * 2);
    ctx.fill();
  }
  return canvas.toDataURL('image/png');
}

/** Keeps document.title and the icon link in step with a summary; touches the DOM only on change. */
export class TabIndicator {
  constructor(doc = document) {
    this.doc = doc;
    this.canvas = doc.createElement('canvas');
    this.link = doc.querySelector('link[rel="icon"]') || doc.head.appendChild(doc.createElement('link'));
    this.link.rel = 'icon';
    this._title = null;
    this._iconKey = null;
  }

  update(summary) {
    const title = titleFor(summary);
    if (title !== this._title) {
      this._title = title;
      this.doc.title = title;
    }
    // Whole percents are enough for a 32 px ring and keep redraws rare.
    const key = `${summary.running}:${Math.floor(summary.progress * 100)}`;
    if (key !== this._iconKey) {
      this._iconKey = key;
      this.link.type = 'image/png';
      this.link.href = drawFavicon(this.canvas, summary);
      this.link.dataset.running = String(summary.running);
      this.link.dataset.progress = String(Math.floor(summary.progress * 100));
    }
  }
}
