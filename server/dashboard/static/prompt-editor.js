// Edits a running stream's prompts: one card per node with its inputs (or the raw JSON), applied with
// POST /stream/{id}/update-prompts. A rejected update leaves the stream as it was; its validation
// errors are shown on the cards of the nodes they concern, beside the input they name.

import { html, useEffect, useState } from './vendor/htm-preact.js';
import { api, getJSON } from './api.js';
import { shortId } from './format.js';
import { toast } from './ui.js';
import { groupValidationErrors } from './validation.js';

const isLink = (v) => Array.isArray(v) && v.length === 2 && (typeof v[0] === 'string' || typeof v[0] === 'number') && Number.isInteger(v[1]);
const clone = (v) => JSON.parse(JSON.stringify(v));
const byNodeId = (a, b) => {
  const na = Number(a);
  const nb = Number(b);
  return Number.isFinite(na) && Number.isFinite(nb) ? na - nb : String(a).localeCompare(String(b));
};

function InputEditor({ name, value, onChange, invalid }) {
  const cls = `input-value ${invalid ? 'invalid' : ''}`;
  if (isLink(value)) {
    return html`<span class="link-chip" title="linked to another node's output">← #${value[0]} · out ${value[1]}</span>`;
  }
  if (typeof value === 'boolean') {
    return html`<input type="checkbox" class=${cls} name=${name} checked=${value} onChange=${(e) => onChange(e.target.checked)} />`;
  }
  if (typeof value === 'number') {
    return html`<input type="number" step="any" class=${cls} name=${name} value=${value}
      onInput=${(e) => e.target.value !== '' && Number.isFinite(Number(e.target.value)) && onChange(Number(e.target.value))} />`;
  }
  if (typeof value === 'string') {
    return value.length > 60 || value.includes('\n')
      ? html`<textarea class=${cls} name=${name} rows="3" onInput=${(e) => onChange(e.target.value)}>${value}</textarea>`
      : html`<input type="text" class=${cls} name=${name} value=${value} onInput=${(e) => onChange(e.target.value)} />`;
  }
  return html`<input type="text" class=${`${cls} mono`} name=${name} value=${JSON.stringify(value)}
    onChange=${(e) => {
      try {
        onChange(JSON.parse(e.target.value));
      } catch {
        e.target.classList.add('invalid');
      }
    }} />`;
}

function NodeCard({ id, node, errors, onInput }) {
  const inputs = node && typeof node === 'object' ? node.inputs || {} : {};
  const items = errors?.items || [];
  const byInput = {};
  for (const item of items) if (item.input_name) (byInput[item.input_name] ||= []).push(item);
  const known = new Set(Object.keys(inputs));
  const general = items.filter((i) => !i.input_name || !known.has(i.input_name));
  return html`<div class=${`node-card ${items.length ? 'has-errors' : ''}`} data-testid="node-card" data-node-id=${id}>
    <div class="node-head"><span class="mono">#${id}</span> <b>${node?.class_type || '(no class_type)'}</b>
      ${items.length ? html`<span class="pill pill-err">${items.length} error${items.length > 1 ? 's' : ''}</span>` : ''}</div>
    ${general.map((i) => html`<div class="node-error" data-testid="node-error">${i.input_name ? html`<b>${i.input_name}</b>: ` : ''}${i.message}</div>`)}
    ${Object.keys(inputs).length
      ? html`<div class="node-inputs">
          ${Object.entries(inputs).map(([name, value]) => html`<label class="node-input" key=${name}>
              <span class="input-name">${name}</span>
              <${InputEditor} name=${name} value=${value} invalid=${!!byInput[name]} onChange=${(v) => onInput(id, name, v)} />
              ${(byInput[name] || []).map((i) => html`<span class="node-error inline" data-testid="node-error">${i.message}</span>`)}
            </label>`)}
        </div>`
      : html`<div class="muted small">no inputs</div>`}
  </div>`;
}

export function PromptEditor({ streamId, onClose, onApplied }) {
  const [prompts, setPrompts] = useState(null);
  const [index, setIndex] = useState(0);
  const [mode, setMode] = useState('nodes');
  const [texts, setTexts] = useState([]);
  const [loadError, setLoadError] = useState(null);
  const [errors, setErrors] = useState(null);
  const [jsonError, setJsonError] = useState(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    getJSON(`/stream/${encodeURIComponent(streamId)}/prompts`)
      .then((body) => {
        setPrompts(body.prompts);
        setTexts(body.prompts.map((p) => JSON.stringify(p, null, 2)));
      })
      .catch((err) => setLoadError(err.message));
    const onKey = (e) => e.key === 'Escape' && onClose();
    window.addEventListener('keydown', onKey);
    return () => window.removeEventListener('keydown', onKey);
  }, [streamId]);

  /** The prompts as they stand (the JSON texts parsed, in JSON mode); null when a text is not JSON. */
  const current = () => {
    if (mode === 'nodes') return prompts;
    try {
      const parsed = texts.map((t) => JSON.parse(t));
      setJsonError(null);
      return parsed;
    } catch (err) {
      setJsonError(`Prompt ${index + 1}: ${err.message}`);
      return null;
    }
  };

  const switchMode = (next) => {
    if (next === mode) return;
    if (next === 'nodes') {
      const parsed = current();
      if (!parsed) return;
      setPrompts(parsed);
    } else {
      setTexts(prompts.map((p) => JSON.stringify(p, null, 2)));
    }
    setMode(next);
  };

  const onInput = (nodeId, name, value) => {
    setPrompts((list) => {
      const next = clone(list);
      next[index][nodeId].inputs[name] = value;
      return next;
    });
  };

  const apply = async () => {
    const body = current();
    if (!body) return;
    setBusy(true);
    try {
      await api('POST', `/stream/${encodeURIComponent(streamId)}/update-prompts`, { prompts: body });
      toast(`Prompts updated on ${shortId(streamId, 18)}`, 'ok');
      onApplied?.();
      onClose();
    } catch (err) {
      const grouped = groupValidationErrors(err.body || err.message);
      if (err.status === 0) grouped.summary = err.message;
      setErrors(grouped);
      if (grouped.promptIndex != null && grouped.promptIndex < body.length) setIndex(grouped.promptIndex);
      if (mode === 'json' && Object.keys(grouped.byNode).length) {
        setPrompts(body);
        setMode('nodes'); // show the errors beside the nodes they concern
      }
    } finally {
      setBusy(false);
    }
  };

  const prompt = prompts?.[index];
  const nodeIds = prompt && typeof prompt === 'object' ? Object.keys(prompt).sort(byNodeId) : [];
  const orphanErrors = errors ? Object.entries(errors.byNode).filter(([id]) => !nodeIds.includes(id)) : [];

  return html`<div class="overlay" onClick=${(e) => e.target === e.currentTarget && onClose()}>
    <div class="dialog" role="dialog" aria-label="Edit prompts" data-testid="prompt-editor">
      <header class="dialog-head">
        <h3>Prompts of <span class="mono">${shortId(streamId, 24)}</span></h3>
        <span class="grow"></span>
        <div class="segmented">
          <button class=${mode === 'nodes' ? 'on' : ''} onClick=${() => switchMode('nodes')}>Nodes</button>
          <button class=${mode === 'json' ? 'on' : ''} data-testid="json-mode" onClick=${() => switchMode('json')}>JSON</button>
        </div>
        <button class="ghost" aria-label="close" onClick=${onClose}>✕</button>
      </header>
      ${(prompts?.length || 0) > 1 &&
      html`<nav class="prompt-tabs">
        ${prompts.map((_, i) => html`<button class=${i === index ? 'on' : ''} onClick=${() => setIndex(i)}>Prompt ${i + 1}</button>`)}
      </nav>`}
      <div class="dialog-body">
        ${loadError && html`<div class="errors"><div class="errors-summary">${loadError}</div></div>`}
        ${!prompts && !loadError && html`<div class="muted">Loading…</div>`}
        ${errors &&
        html`<div class="errors" data-testid="update-rejected">
          <div class="errors-summary">${errors.summary || 'The update was rejected'}</div>
          <div class="muted small">The stream goes on with its current prompts.</div>
          ${errors.general.map((m) => html`<div class="errors-item">${m}</div>`)}
          ${orphanErrors.map(([id, slot]) => html`<div class="errors-item">#${id} ${slot.nodeType || ''}: ${slot.items.map((i) => i.message).join('; ')}</div>`)}
        </div>`}
        ${jsonError && html`<div class="errors"><div class="errors-summary">${jsonError}</div></div>`}
        ${prompts && mode === 'nodes' &&
        html`<div class="node-list">
          ${nodeIds.map((id) => html`<${NodeCard} key=${`${index}-${id}`} id=${id} node=${prompt[id]} errors=${errors?.byNode[id]} onInput=${onInput} />`)}
        </div>`}
        ${prompts && mode === 'json' &&
        html`<textarea class="json-editor mono" data-testid="prompt-json" spellcheck="false" value=${texts[index]}
          onInput=${(e) => setTexts((t) => t.map((x, i) => (i === index ? e.target.value : x)))}></textarea>`}
      </div>
      <footer class="dialog-foot">
        <span class="muted small">Validated before the stream is touched; applied at a frame boundary.</span>
        <span class="grow"></span>
        <button class="ghost" onClick=${onClose}>Cancel</button>
        <button class="primary" data-testid="apply-prompts" disabled=${busy || !prompts} onClick=${apply}>${busy ? 'Applying…' : 'Apply'}</button>
      </footer>
    </div>
  </div>`;
}
