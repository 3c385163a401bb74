// Small shared view pieces: status pills, progress bars, toasts, a two-step confirm button.

import { html, useEffect, useRef, useState } from './vendor/htm-preact.js';
import { percent } from './format.js';

export function Pill({ kind, children, title }) {
  return html`<span class=${`pill pill-${kind}`} title=${title || ''}>${children}</span>`;
}

export function ProgressBar({ value, status, label }) {
  const width = `${Math.max(0, Math.min(1, value || 0)) * 100}%`;
  return html`<div class=${`bar bar-${status || 'running'}`} role="progressbar"
      aria-valuemin="0" aria-valuemax="100" aria-valuenow=${Math.round((value || 0) * 100)} aria-label=${label || 'progress'}>
    <div class="bar-fill" style=${{ width }}></div>
    <span class="bar-text">${percent(value)}</span>
  </div>`;
}

/** A button that asks once more ("Confirm?") before acting; the question times out. */
export function ConfirmButton({ onConfirm, children, confirmText = 'Confirm?', class: cls = '', disabled, title, testid }) {
  const [asking, setAsking] = useState(false);
  const timer = useRef(null);
  useEffect(() => () => clearTimeout(timer.current), []);
  const click = () => {
    if (!asking) {
      setAsking(true);
      timer.current = setTimeout(() => setAsking(false), 3000);
      return;
    }
    clearTimeout(timer.current);
    setAsking(false);
    onConfirm();
  };
  return html`<button class=${`${cls} ${asking ? 'asking' : ''}`} disabled=${disabled} title=${title || ''}
      data-testid=${testid} onClick=${click}>${asking ? confirmText : children}</button>`;
}

// ---- toasts -------------------------------------------------------------------------------------

const toastListeners = new Set();
let toastSeq = 0;

export function toast(message, kind = 'info', ms = 4000) {
  const item = { id: ++toastSeq, message, kind };
  for (const listener of toastListeners) listener({ add: item, ms });
}

export function Toasts() {
  const [items, setItems] = useState([]);
  useEffect(() => {
    const listener = ({ add, ms }) => {
      setItems((list) => [...list.slice(-4), add]);
      setTimeout(() => setItems((list) => list.filter((i) => i.id !== add.id)), ms);
    };
    toastListeners.add(listener);
    return () => toastListeners.delete(listener);
  }, []);
  return html`<div class="toasts" aria-live="polite">
    ${items.map((i) => html`<div key=${i.id} class=${`toast toast-${i.kind}`}>${i.message}</div>`)}
  </div>`;
}

/** Node errors grouped by node (see validation.js), for places that have no node editor. */
export function ValidationSummary({ grouped }) {
  if (!grouped) return null;
  const nodes = Object.entries(grouped.byNode);
  return html`<div class="errors" data-testid="validation-errors">
    ${grouped.summary && html`<div class="errors-summary">${grouped.summary}</div>`}
    ${grouped.general.map((m) => html`<div class="errors-item">${m}</div>`)}
    ${nodes.map(
      ([id, slot]) => html`<div class="errors-node" data-node-id=${id}>
        <span class="mono">#${id}</span> ${slot.nodeType || ''}
        <ul>${slot.items.map((i) => html`<li>${i.input_name ? html`<b>${i.input_name}</b>: ` : ''}${i.message}</li>`)}</ul>
      </div>`,
    )}
  </div>`;
}
