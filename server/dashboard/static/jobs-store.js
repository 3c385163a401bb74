// Every job the server knows, prompt-centric (the seed's `promptStates`): one record per prompt_id,
// fed by GET /queue, GET /history and ComfyUI's WebSocket events (each carries prompt_id). No DOM
// here: views subscribe and read `list()`.

import { stepName } from './format.js';

export const FINISHED = new Set(['success', 'error', 'interrupted', 'cancelled']);
const KEEP_FINISHED = 100;

function newJob(id) {
  return {
    id,
    number: null,
    clientId: null, // who submitted it (extra_data.client_id); null while unknown
    status: 'pending', // pending | running | success | error | interrupted | cancelled
    prompt: null,
    submittedAt: null,
    startedAt: null,
    endedAt: null,
    cached: new Set(),
    done: new Set(),
    currentNode: null,
    nodeProgress: null, // {value, max} of the node running now
    nodeStates: null, // progress_state's {node_id: {value, max, state}}
    outputs: {}, // node_id -> ComfyUI ui output ({images: [{filename, subfolder, type}], ...})
    error: null, // {message, type, nodeId, nodeType, traceback}
    text: null, // the latest progress_text
    preview: null, // object URL of the latest binary preview
    progress: 0,
    step: 'Queued',
    etaS: null,
    nodeStart: null, // {node, at, max}: the node running now, since when (and its step count)
    nodeTimes: {}, // node_id -> {s, max}: how long each node of this run took (measured here)
  };
}

// Time left comes from measured per-node times of earlier runs of the same prompt, never from the
// progress fraction (which made it jump: ~3 s -> ~15 s -> ~12 s). "The same prompt" is its shape:
// node ids and class types, so a new seed or text still counts; a node's time scales with its step
// count. Kept per browser, the latest run of each shape.
const TIMES_KEY = 'comfystream.nodeTimes';
const TIMES_KEPT = 50;

function promptShape(prompt) {
  if (!prompt || typeof prompt !== 'object') return null;
  return Object.keys(prompt)
    .sort()
    .map((id) => `${id}:${prompt[id]?.class_type}`)
    .join('|');
}

function loadTimes() {
  try {
    return new Map(JSON.parse(localStorage.getItem(TIMES_KEY) || '[]'));
  } catch {
    return new Map();
  }
}

/** A queue or history entry's prompt tuple: [number, prompt_id, prompt, extra_data, outputs, ...]. */
function promptTuple(item) {
  if (Array.isArray(item)) {
    const [number, id, prompt, extra] = item;
    return { number, id, prompt, extra: extra || {} };
  }
  if (item && typeof item === 'object') {
    return {
      number: item.number ?? null,
      id: item.prompt_id ?? item.id,
      prompt: item.prompt ?? null,
      extra: item.extra_data || {},
    };
  }
  return null;
}

function classTypeOf(job, nodeId) {
  const node = job.prompt && nodeId != null ? job.prompt[nodeId] : null;
  return node && typeof node === 'object' ? node.class_type : null;
}

export class JobStore {
  constructor(clientId, { now = () => Date.now() } = {}) {
    this.clientId = clientId;
    this.now = now;
    this.jobs = new Map();
    this.version = 0;
    this._listeners = new Set();
    this.times = typeof localStorage === 'undefined' ? new Map() : loadTimes(); // shape -> node times
  }

  _rememberTimes(job) {
    const shape = promptShape(job.prompt);
    if (!shape || !Object.keys(job.nodeTimes).length) return;
    // A node this run took from the worker's cache (a model loaded by an earlier prompt) took no
    // time here: known as 0, so that the next run of this shape gets an estimate at all.
    const times = { ...job.nodeTimes };
    for (const id of job.cached) if (!(String(id) in times)) times[String(id)] = { s: 0, max: null };
    this.times.delete(shape);
    this.times.set(shape, times);
    while (this.times.size > TIMES_KEPT) this.times.delete(this.times.keys().next().value);
    try {
      localStorage.setItem(TIMES_KEY, JSON.stringify([...this.times]));
    } catch {
      /* private mode or full: this page still remembers */
    }
  }

  /** The node running now changes to `node` (null: none) at `now`: the one before took until now. */
  _nodeSwitch(job, node, now) {
    const current = job.nodeStart;
    if (current && current.node !== node) {
      job.nodeTimes[String(current.node)] = { s: (now - current.at) / 1000, max: current.max };
    }
    if (node == null) job.nodeStart = null;
    else if (!current || current.node !== node) job.nodeStart = { node, at: now, max: null };
  }

  /** Seconds left from the times an earlier run of this prompt's shape took; null while any node
   * still to run has no measured time. It only goes down: the running node counts its measured time
   * less what it has run (never below 0), the nodes after it their measured times. */
  _estimate(job, now) {
    const earlier = this.times.get(promptShape(job.prompt));
    if (!earlier || !job.prompt) return null;
    const finished = new Set([...job.done, ...job.cached, ...Object.keys(job.nodeTimes)]);
    let left = 0;
    for (const id of Object.keys(job.prompt)) {
      if (finished.has(id)) continue;
      const measured = earlier[id];
      if (!measured) return null;
      // A node's time scales with its step count (a sampler's steps, a loop's iterations).
      const max = job.nodeStart && String(job.nodeStart.node) === id ? job.nodeStart.max : null;
      const expected = measured.max && max ? (measured.s * max) / measured.max : measured.s;
      if (job.nodeStart && String(job.nodeStart.node) === id) {
        left += Math.max(0, expected - (now - job.nodeStart.at) / 1000);
      } else {
        left += expected;
      }
    }
    return left;
  }

  subscribe(listener) {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  _changed() {
    this.version += 1;
    for (const listener of [...this._listeners]) listener(this);
  }

  get(id) {
    return this.jobs.get(id) || null;
  }

  isMine(job) {
    return job.clientId != null && job.clientId === this.clientId;
  }

  _ensure(id) {
    let job = this.jobs.get(id);
    if (!job) {
      job = newJob(id);
      job.submittedAt = this.now();
      this.jobs.set(id, job);
    }
    return job;
  }

  _adopt(job, { number, prompt, extra }) {
    if (number != null) job.number = number;
    if (prompt && typeof prompt === 'object' && !job.prompt) job.prompt = prompt;
    if (extra && extra.client_id && !job.clientId) job.clientId = extra.client_id;
  }

  // ---- sources ----------------------------------------------------------------------------------

  /** This tab's POST /prompt (or /tasks) answered: the job is ours. */
  markSubmitted(id, { number = null, prompt = null, taskId = null } = {}) {
    const job = this._ensure(id);
    job.clientId = this.clientId;
    if (taskId) job.taskId = taskId;
    this._adopt(job, { number, prompt, extra: {} });
    this._recompute(job);
    this._changed();
    return job;
  }

  markCancelled(id) {
    const job = this.jobs.get(id);
    if (!job || FINISHED.has(job.status) || job.status === 'running') return;
    job.status = 'cancelled';
    job.endedAt = this.now();
    this._recompute(job);
    this._changed();
  }

  /** GET /queue: {queue_running: [...], queue_pending: [...]}. Returns the ids it lists. */
  applyQueue(queue, { notify = true } = {}) {
    const seen = new Set();
    for (const [key, status] of [
      ['queue_running', 'running'],
      ['queue_pending', 'pending'],
    ]) {
      for (const item of queue?.[key] || []) {
        const tuple = promptTuple(item);
        if (!tuple?.id) continue;
        seen.add(tuple.id);
        const job = this._ensure(tuple.id);
        this._adopt(job, tuple);
        if (FINISHED.has(job.status)) continue; // events are newer than a queue snapshot
        if (status === 'running' && job.status === 'pending') {
          job.status = 'running';
          job.startedAt = job.startedAt || this.now();
        }
        this._recompute(job);
      }
    }
    if (notify) this._changed();
    return seen;
  }

  /** GET /history: {prompt_id: {prompt, outputs, status: {status_str, completed, messages}}}. */
  applyHistory(history, { notify = true } = {}) {
    const seen = new Set();
    for (const [id, entry] of Object.entries(history || {})) {
      if (!entry || typeof entry !== 'object') continue;
      seen.add(id);
      const job = this._ensure(id);
      const tuple = promptTuple(entry.prompt);
      if (tuple) this._adopt(job, tuple);
      if (entry.outputs && typeof entry.outputs === 'object') {
        for (const [node, output] of Object.entries(entry.outputs)) {
          if (!job.outputs[node]) job.outputs[node] = output;
        }
      }
      const messages = entry.status?.messages || [];
      for (const [type, data] of messages) {
        if (type === 'execution_start' && !job.startedAt) job.startedAt = data?.timestamp || null;
      }
      if (!FINISHED.has(job.status)) {
        const last = [...messages].reverse().find(([type]) => type.startsWith('execution_') && type !== 'execution_cached');
        if (last && last[0] === 'execution_interrupted') this._finish(job, 'interrupted', last[1]);
        else if (last && last[0] === 'execution_error') this._finish(job, 'error', last[1]);
        else if (entry.status?.status_str === 'error') this._finish(job, 'error', { exception_message: 'failed' });
        else if (entry.status?.completed !== false) this._finish(job, 'success', last?.[1]);
        // A job that ended before this page looked: its own end time, not the time we learnt of it.
        if (FINISHED.has(job.status) && Number.isFinite(last?.[1]?.timestamp)) job.endedAt = last[1].timestamp;
      }
      this._recompute(job);
    }
    if (notify) this._changed();
    return seen;
  }

  /** After a queue and a later history snapshot: a job never started and in neither was deleted. */
  reconcile(queueIds, historyIds) {
    let changed = false;
    for (const job of this.jobs.values()) {
      if (job.status === 'pending' && !job.startedAt && !queueIds.has(job.id) && !historyIds.has(job.id)) {
        if (this.now() - (job.submittedAt || 0) < 2000) continue; // maybe not queued yet when we asked
        job.status = 'cancelled';
        job.endedAt = this.now();
        this._recompute(job);
        changed = true;
      }
    }
    this._prune();
    this._changed();
    return changed;
  }

  /** The job's latest preview image (a data: or blob: URL). */
  setPreview(id, url) {
    const job = this.jobs.get(id);
    if (!job) return;
    if (job.preview?.startsWith('blob:')) URL.revokeObjectURL(job.preview);
    job.preview = url;
    this._changed();
  }

  /** One ComfyUI event ({type, data}); `fromOwnSocket`: it came on this tab's own /ws (so it is ours). */
  applyEvent(type, data, { fromOwnSocket = false } = {}) {
    const id = data?.prompt_id;
    if (!id) return false;
    const job = this._ensure(id);
    if (data.client_id && !job.clientId) job.clientId = data.client_id;
    if (fromOwnSocket && !job.clientId) job.clientId = this.clientId;
    const now = this.now();
    switch (type) {
      case 'execution_start':
        if (!FINISHED.has(job.status)) job.status = 'running';
        job.startedAt = now;
        break;
      case 'execution_cached':
        for (const node of data.nodes || []) job.cached.add(String(node));
        break;
      case 'executing': {
        const node = data.node ?? null;
        this._nodeSwitch(job, node, now);
        if (job.currentNode != null && job.currentNode !== node) job.done.add(String(job.currentNode));
        job.currentNode = node;
        job.nodeProgress = null;
        if (node != null && job.status === 'pending') {
          job.status = 'running';
          job.startedAt = job.startedAt || now;
        }
        break;
      }
      case 'progress':
        if (data.node != null && job.currentNode !== data.node) {
          this._nodeSwitch(job, data.node, now);
          if (job.currentNode != null) job.done.add(String(job.currentNode));
          job.currentNode = data.node;
        }
        job.nodeProgress = { value: Number(data.value) || 0, max: Number(data.max) || 0 };
        if (job.nodeStart && job.nodeProgress.max > 0) job.nodeStart.max = job.nodeProgress.max;
        if (job.status === 'pending') {
          job.status = 'running';
          job.startedAt = job.startedAt || now;
        }
        break;
      case 'progress_state':
        job.nodeStates = data.nodes || null;
        break;
      case 'progress_text':
        job.text = data.text ?? null;
        break;
      case 'executed':
        if (data.node != null && data.output) job.outputs[String(data.node)] = data.output;
        break;
      case 'execution_success':
        this._finish(job, 'success', data);
        break;
      case 'execution_error':
        this._finish(job, 'error', data);
        break;
      case 'execution_interrupted':
        this._finish(job, 'interrupted', data);
        break;
      default:
        return false;
    }
    this._recompute(job);
    this._changed();
    return true;
  }

  _finish(job, status, data) {
    if (FINISHED.has(job.status)) return;
    job.status = status;
    job.endedAt = this.now();
    if (status === 'success') {
      this._nodeSwitch(job, null, job.endedAt);
      this._rememberTimes(job);
    }
    if (job.currentNode != null && status === 'success') job.done.add(String(job.currentNode));
    if (status === 'error') {
      job.error = {
        message: data?.exception_message || data?.message || 'the workflow failed',
        type: data?.exception_type || null,
        nodeId: data?.node_id ?? null,
        nodeType: data?.node_type ?? null,
        traceback: Array.isArray(data?.traceback) ? data.traceback.join('') : data?.traceback || null,
      };
    }
    if (status === 'interrupted') {
      job.error = { message: 'Interrupted', nodeId: data?.node_id ?? null, nodeType: data?.node_type ?? null };
    }
  }

  // ---- derived ----------------------------------------------------------------------------------

  _recompute(job) {
    job.etaS = null;
    if (job.status === 'pending') {
      job.progress = 0;
      job.step = 'Queued';
      return;
    }
    if (FINISHED.has(job.status)) {
      if (job.status === 'success') {
        job.progress = 1;
        job.step = 'Done';
      } else if (job.status === 'cancelled') {
        job.step = 'Cancelled before it started';
      } else {
        const where = job.error?.nodeId != null ? ` at ${job.error.nodeType || 'node'} #${job.error.nodeId}` : '';
        job.step = job.status === 'interrupted' ? `Interrupted${where}` : `Failed${where}`;
      }
      return;
    }
    const total = job.prompt ? Object.keys(job.prompt).length : 0;
    let done;
    let partial = 0;
    const states = job.nodeStates ? Object.values(job.nodeStates) : null;
    if (states && states.length) {
      done = states.filter((s) => s.state === 'finished').length;
      for (const s of states) {
        if (s.state === 'running' && s.max > 0) partial += Math.min(1, s.value / s.max);
      }
      done += [...job.cached].filter((n) => !job.nodeStates[n]).length;
    } else {
      done = new Set([...job.done, ...job.cached]).size;
      if (job.nodeProgress && job.nodeProgress.max > 0) partial = Math.min(1, job.nodeProgress.value / job.nodeProgress.max);
    }
    const denominator = Math.max(total, done + (job.currentNode != null ? 1 : 0), 1);
    job.progress = Math.min(0.99, (done + partial) / denominator);
    if (job.currentNode == null) {
      job.step = 'Starting';
    } else {
      const name = stepName(classTypeOf(job, job.currentNode));
      const np = job.nodeProgress;
      const count = np && np.max > 1 ? ` · step ${np.value}/${np.max}` : '';
      job.step = `${name} (node ${job.currentNode})${count}`;
    }
    job.etaS = this._estimate(job, this.now());
  }

  /** ETA moves with the clock: recompute running jobs (the views call this once a second). */
  tick() {
    let any = false;
    for (const job of this.jobs.values()) {
      if (job.status === 'running') {
        this._recompute(job);
        any = true;
      }
    }
    if (any) this._changed();
  }

  _prune() {
    const finished = [...this.jobs.values()].filter((j) => FINISHED.has(j.status));
    if (finished.length <= KEEP_FINISHED) return;
    finished.sort((a, b) => (a.endedAt || 0) - (b.endedAt || 0));
    for (const job of finished.slice(0, finished.length - KEEP_FINISHED)) {
      if (job.preview?.startsWith('blob:')) URL.revokeObjectURL(job.preview);
      this.jobs.delete(job.id);
    }
  }

  /** Running first (oldest start first), then pending (queue order), then finished (newest first). */
  list() {
    const rank = (j) => (j.status === 'running' ? 0 : j.status === 'pending' ? 1 : 2);
    return [...this.jobs.values()].sort((a, b) => {
      const r = rank(a) - rank(b);
      if (r) return r;
      if (a.status === 'running') return (a.startedAt || 0) - (b.startedAt || 0);
      if (a.status === 'pending') return (a.number ?? Infinity) - (b.number ?? Infinity) || a.submittedAt - b.submittedAt;
      return (b.endedAt || 0) - (a.endedAt || 0);
    });
  }
}
