// Keeps a JobStore current: every job's events from GET /jobs/events (SSE: ComfyUI's {type, data}
// with the submitting client's client_id in data), reconnecting with backoff, plus GET /queue and
// GET /history snapshots (on connect, on every queue change, and every few seconds as a floor).

import { getJSON } from './api.js';

const HISTORY_ITEMS = 64;
const ENDED = new Set(['execution_success', 'execution_error', 'execution_interrupted', 'job_done']);

export class JobsFeed {
  constructor(store, { url = '/jobs/events', pollMs = 5000, baseDelayMs = 500, maxDelayMs = 10000 } = {}) {
    this.store = store;
    this.url = url;
    this.pollMs = pollMs;
    this.baseDelayMs = baseDelayMs;
    this.maxDelayMs = maxDelayMs;
    this.state = 'closed'; // connecting | open | closed
    this.jobsPresent = null; // the server has a job queue (from the feed's hello)
    this.queueRemaining = null;
    this.lastError = null;
    this._source = null;
    this._attempts = 0;
    this._retryTimer = null;
    this._refreshTimer = null;
    this._refreshing = false;
    this._again = false;
    this._pollTimer = null;
    this._stopped = true;
    this._listeners = new Set();
  }

  onState(listener) {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  _notify() {
    for (const listener of [...this._listeners]) listener(this);
  }

  start() {
    this._stopped = false;
    this._connect(); // the feed's hello says whether there is a job queue to fetch
    this._pollTimer = setInterval(() => this.refresh(0), this.pollMs);
  }

  stop() {
    this._stopped = true;
    clearInterval(this._pollTimer);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._retryTimer);
    this._source?.close();
    this._source = null;
  }

  _connect() {
    if (this._stopped) return;
    const source = new EventSource(this.url);
    this._source = source;
    this.state = 'connecting';
    this._notify();
    source.onopen = () => {
      this._attempts = 0;
      this.state = 'open';
      this._notify();
    };
    source.onmessage = (message) => this._onMessage(message.data);
    source.onerror = () => {
      // Reconnect ourselves, with backoff: EventSource gives up for good on a refused response.
      source.close();
      if (this._source !== source) return;
      this._source = null;
      this.state = 'closed';
      this._notify();
      if (this._stopped) return;
      this._attempts += 1;
      const delay = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** (this._attempts - 1));
      this._retryTimer = setTimeout(() => this._connect(), delay * (0.8 + 0.4 * Math.random()));
    };
  }

  _onMessage(raw) {
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      return;
    }
    const { type, data } = message || {};
    if (type === 'hello') {
      this.jobsPresent = !!data?.jobs;
      this._notify();
      if (this.jobsPresent) this.refresh(0); // whatever happened while away
      return;
    }
    if (type === 'status') {
      this.queueRemaining = data?.status?.exec_info?.queue_remaining ?? this.queueRemaining;
      this.refresh();
      return;
    }
    if (type === 'preview') {
      if (data?.prompt_id && data.image_url) this.store.setPreview(data.prompt_id, data.image_url);
      return;
    }
    if (type === 'job_cancelled') {
      if (data?.prompt_id) this.store.markCancelled(data.prompt_id);
      return;
    }
    if (type !== 'job_done') this.store.applyEvent(type, data || {});
    if (ENDED.has(type)) this.refresh();
  }

  /** Fetch /queue then /history (in that order: a job in neither was deleted). Coalesced. */
  refresh(delayMs = 150) {
    if (this._refreshTimer || this.jobsPresent === false) return;
    this._refreshTimer = setTimeout(() => {
      this._refreshTimer = null;
      this._refreshNow();
    }, delayMs);
  }

  async _refreshNow() {
    if (this._refreshing) {
      this._again = true;
      return;
    }
    this._refreshing = true;
    try {
      const queue = await getJSON('/queue');
      const history = await getJSON(`/history?max_items=${HISTORY_ITEMS}`);
      const queued = this.store.applyQueue(queue, { notify: false });
      const finished = this.store.applyHistory(history, { notify: false });
      this.store.reconcile(queued, finished);
      this.lastError = null;
    } catch (err) {
      this.lastError = err.status === 404 ? 'this server has no job queue' : err.message;
    }
    this._refreshing = false;
    this._notify();
    if (this._again) {
      this._again = false;
      this.refresh(0);
    }
  }
}
