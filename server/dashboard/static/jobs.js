// Jobs panel: submit a workflow (JSON file or paste, optional input image), and every job the server
// knows (this tab's and other clients'), each with its own progress, step, time left and outputs.

import { html, useEffect, useRef, useState } from './vendor/htm-preact.js';
import { api, postJSON } from './api.js';
import { clockTime, duration, shortId } from './format.js';
import { FINISHED } from './jobs-store.js';
import { ConfirmButton, Pill, ProgressBar, ValidationSummary, toast } from './ui.js';
import { groupValidationErrors } from './validation.js';

const STATUS_KIND = { running: 'run', pending: 'muted', success: 'ok', error: 'err', interrupted: 'warn', cancelled: 'muted' };
const LOAD_IMAGE_TYPES = new Set(['LoadImage', 'PrimaryInputLoadImage']);
const EXAMPLE = {
  1: { class_type: 'EmptyImage', inputs: { width: 256, height: 256, batch_size: 1, color: 0x3366cc } },
  2: { class_type: 'ImageInvert', inputs: { image: ['1', 0] } },
  3: { class_type: 'SaveImage', inputs: { images: ['2', 0], filename_prefix: 'dashboard' } },
};

/** The API-format prompt in a pasted or loaded text; throws an Error that says what is wrong. */
export function parseWorkflow(text) {
  if (!text.trim()) throw new Error('Paste a workflow or choose a JSON file');
  let value;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new Error(`Not JSON: ${err.message}`);
  }
  if (value && typeof value === 'object' && !Array.isArray(value) && value.prompt && typeof value.prompt === 'object') {
    value = value.prompt;
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw new Error('The workflow must be a JSON object');
  if (Array.isArray(value.nodes) && Array.isArray(value.links)) {
    throw new Error('This is a UI-format workflow: export it in API format (Workflow → Export (API))');
  }
  const bad = Object.entries(value).filter(([, node]) => !node || typeof node !== 'object' || typeof node.class_type !== 'string');
  if (bad.length) throw new Error(`Not an API-format prompt: node ${bad[0][0]} has no class_type`);
  return value;
}

function SubmitForm({ store, clientId, onTask }) {
  const [text, setText] = useState('');
  const [image, setImage] = useState(null);
  const [asTask, setAsTask] = useState(false);
  const [busy, setBusy] = useState(false);
  const [problem, setProblem] = useState(null); // {message} or {grouped}
  const imageInput = useRef(null);

  const loadFile = async (event) => {
    const file = event.target.files?.[0];
    if (file) setText(await file.text());
    event.target.value = '';
  };

  const submit = async (event) => {
    event.preventDefault();
    setProblem(null);
    let prompt;
    try {
      prompt = parseWorkflow(text);
    } catch (err) {
      setProblem({ message: err.message });
      return;
    }
    setBusy(true);
    try {
      if (image) {
        const loaders = Object.values(prompt).filter((n) => LOAD_IMAGE_TYPES.has(n.class_type));
        if (!loaders.length) throw new Error('The workflow has no LoadImage node to take the image');
        const form = new FormData();
        form.append('image', image, image.name);
        form.append('overwrite', 'false');
        const uploaded = await api('POST', '/upload/image', undefined, { form });
        const name = uploaded.subfolder ? `${uploaded.subfolder}/${uploaded.name}` : uploaded.name;
        for (const node of loaders) node.inputs = { ...node.inputs, image: name };
      }
      const body = { prompt, client_id: clientId };
      if (asTask) {
        const answer = await postJSON('/tasks', body);
        const promptId = answer.prompt_id || answer.promptId;
        if (promptId) store.markSubmitted(promptId, { prompt, number: answer.number, taskId: answer.taskId });
        onTask(answer.taskId, `Task · ${Object.keys(prompt).length} nodes`);
      } else {
        const answer = await postJSON('/prompt', body);
        store.markSubmitted(answer.prompt_id, { prompt, number: answer.number });
        toast(`Queued job ${shortId(answer.prompt_id)}`, 'ok', 2500);
      }
    } catch (err) {
      if (err.body && typeof err.body === 'object') setProblem({ grouped: groupValidationErrors(err.body) });
      else setProblem({ message: err.message });
    } finally {
      setBusy(false);
    }
  };

  return html`<form class="card submit" onSubmit=${submit} data-testid="submit-form">
    <div class="submit-row">
      <b>Submit a workflow</b>
      <span class="muted small">API format</span>
      <span class="grow"></span>
      <label class="file-button">Open JSON…<input type="file" accept=".json,application/json" data-testid="workflow-file" onChange=${loadFile} /></label>
      <button type="button" class="ghost" onClick=${() => setText(JSON.stringify(EXAMPLE, null, 2))}>Example</button>
    </div>
    <textarea class="mono workflow-text" data-testid="workflow-text" spellcheck="false" rows="6"
      placeholder='{"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}}, ...}'
      value=${text} onInput=${(e) => setText(e.target.value)}></textarea>
    <div class="submit-row">
      <label class="file-button ${image ? 'chosen' : ''}" title="uploaded with /upload/image and given to the LoadImage nodes">
        ${image ? `Image: ${image.name}` : 'Input image…'}
        <input type="file" accept="image/*" ref=${imageInput} data-testid="image-file" onChange=${(e) => setImage(e.target.files?.[0] || null)} />
      </label>
      ${image && html`<button type="button" class="ghost small" onClick=${() => { setImage(null); imageInput.current.value = ''; }}>✕</button>`}
      <label class="check" title="POST /tasks and follow it in a banner over SSE">
        <input type="checkbox" checked=${asTask} data-testid="as-task" onChange=${(e) => setAsTask(e.target.checked)} /> follow in a banner
      </label>
      <span class="grow"></span>
      <button class="primary" type="submit" disabled=${busy} data-testid="submit-job">${busy ? 'Submitting…' : 'Queue'}</button>
    </div>
    ${problem?.message && html`<div class="errors" data-testid="submit-error"><div class="errors-summary">${problem.message}</div></div>`}
    ${problem?.grouped && html`<${ValidationSummary} grouped=${problem.grouped} />`}
  </form>`;
}

function Outputs({ job }) {
  const images = [];
  for (const [node, output] of Object.entries(job.outputs || {})) {
    for (const img of output?.images || []) {
      if (!img?.filename) continue;
      const query = new URLSearchParams({ filename: img.filename, subfolder: img.subfolder || '', type: img.type || 'output' });
      images.push({ node, src: `/view?${query}`, name: img.filename });
    }
  }
  const texts = Object.entries(job.outputs || {}).flatMap(([node, output]) =>
    (output?.text || []).map((t) => ({ node, text: Array.isArray(t) ? t.join(' ') : String(t) })),
  );
  if (!images.length && !texts.length && !(job.preview && job.status === 'running')) return null;
  return html`<div class="outputs" data-testid="job-outputs">
    ${job.status === 'running' && job.preview && html`<img class="thumb live" src=${job.preview} alt="live preview" title="live preview" />`}
    ${images.map((i) => html`<a href=${i.src} target="_blank" rel="noopener" title=${`node ${i.node}: ${i.name}`}>
      <img class="thumb" src=${i.src} alt=${i.name} data-testid="job-output-image" /></a>`)}
    ${texts.map((t) => html`<div class="mono small output-text">#${t.node}: ${t.text.slice(0, 300)}</div>`)}
  </div>`;
}

function JobCard({ job, mine, onInterrupt, onCancel }) {
  const finished = FINISHED.has(job.status);
  const elapsed = job.startedAt ? ((job.endedAt || Date.now()) - job.startedAt) / 1000 : null;
  const owner = mine ? 'this tab' : job.clientId ? `client ${shortId(job.clientId, 6)}` : 'unknown client';
  return html`<article class=${`card job job-${job.status} ${mine ? 'mine' : ''}`} data-testid="job-card"
      data-prompt-id=${job.id} data-status=${job.status} data-mine=${mine ? 'true' : 'false'}>
    <header class="card-head">
      <span class="mono strong" title=${job.id}>${job.number != null ? html`<span class="muted">#${job.number} </span>` : ''}${shortId(job.id)}</span>
      <span class=${`owner ${mine ? 'owner-mine' : ''}`} data-testid="job-owner" title=${job.clientId || ''}>${owner}</span>
      <${Pill} kind=${STATUS_KIND[job.status]}>${job.status}<//>
      <span class="grow"></span>
      <span class="muted small">${job.startedAt ? clockTime(job.startedAt) : ''}</span>
      ${job.status === 'running' && html`<button class="small danger" data-testid="interrupt-job" onClick=${() => onInterrupt(job.id)}>Interrupt</button>`}
      ${job.status === 'pending' && html`<button class="small" data-testid="cancel-job" onClick=${() => onCancel(job.id)}>Cancel</button>`}
    </header>
    ${!finished || job.status === 'success'
      ? html`<${ProgressBar} value=${job.progress} status=${job.status} label=${`progress of ${job.id}`} />`
      : null}
    <div class="job-line">
      <span class="step" data-testid="job-step">${job.step}</span>
      ${job.text && job.status === 'running' && html`<span class="muted small">${job.text}</span>`}
      <span class="grow"></span>
      ${job.etaS != null && html`<span class="eta" data-testid="job-eta">~${duration(job.etaS)} left</span>`}
      ${elapsed != null && html`<span class="muted small">${finished ? 'took' : 'elapsed'} ${duration(elapsed)}</span>`}
    </div>
    ${job.status === 'error' && job.error && html`<div class="error-line" data-testid="job-error">
      ${job.error.nodeId != null ? html`<span class="mono">#${job.error.nodeId} ${job.error.nodeType || ''}</span> · ` : ''}${job.error.type ? `${job.error.type}: ` : ''}${job.error.message}
    </div>`}
    <${Outputs} job=${job} />
  </article>`;
}

export function JobsPanel({ store, feed, clientId, onTask }) {
  const [, setVersion] = useState(0);
  const [hideFinished, setHideFinished] = useState(() => new Set());
  const [feedState, setFeedState] = useState(feed.state);
  useEffect(() => {
    let frame = null;
    const unsubscribe = store.subscribe(() => {
      if (frame == null) frame = requestAnimationFrame(() => {
        frame = null;
        setVersion(store.version);
      });
    });
    const offFeed = feed.onState(() => setFeedState(`${feed.state}:${feed.lastError || ''}:${feed.jobsPresent}`));
    const tick = setInterval(() => store.tick(), 1000);
    return () => {
      unsubscribe();
      offFeed();
      clearInterval(tick);
      if (frame != null) cancelAnimationFrame(frame);
    };
  }, [store, feed]);

  const jobs = store.list().filter((j) => !hideFinished.has(j.id));
  const running = jobs.filter((j) => j.status === 'running');
  const pending = jobs.filter((j) => j.status === 'pending');
  const finished = jobs.filter((j) => FINISHED.has(j.status));

  const interrupt = async (id) => {
    try {
      await postJSON('/interrupt', { prompt_id: id });
      toast(`Interrupt sent to ${shortId(id)}`, 'info', 2500);
    } catch (err) {
      toast(`Interrupt failed: ${err.message}`, 'err');
    }
  };
  const cancel = async (id) => {
    try {
      await postJSON('/queue', { delete: [id] });
      store.markCancelled(id);
      feed.refresh(0);
    } catch (err) {
      toast(`Cancel failed: ${err.message}`, 'err');
    }
  };
  const stopAll = async () => {
    await Promise.all(running.map((j) => interrupt(j.id)));
  };

  return html`<section class="panel" data-testid="jobs-panel" data-feed=${feedState}>
    <header class="panel-head">
      <h2>Jobs</h2>
      <span class="count" data-testid="job-counts">${running.length} running · ${pending.length} queued · ${finished.length} finished</span>
      <span class="grow"></span>
      ${feed.jobsPresent === false && html`<span class="muted small">this server runs no job queue</span>`}
      ${feed.lastError && html`<span class="err small" title=${feed.lastError}>${feed.lastError}</span>`}
      <${ConfirmButton} class="danger" testid="stop-all-jobs" disabled=${!running.length}
        confirmText=${`Stop ${running.length}?`} onConfirm=${stopAll}>Stop all running<//>
      <button class="ghost" disabled=${!finished.length} onClick=${() => setHideFinished(new Set([...hideFinished, ...finished.map((j) => j.id)]))}>Clear finished</button>
    </header>
    <${SubmitForm} store=${store} clientId=${clientId} onTask=${onTask} />
    <div class="job-list" data-testid="job-list">
      ${jobs.length
        ? jobs.map((job) => html`<${JobCard} key=${job.id} job=${job} mine=${store.isMine(job)} onInterrupt=${interrupt} onCancel=${cancel} />`)
        : html`<div class="empty">No jobs yet. Queue a workflow above, or POST one to <code>/prompt</code>.</div>`}
    </div>
  </section>`;
}
