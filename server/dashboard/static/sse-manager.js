// Follows tasks over Server-Sent Events (`GET /progress/{taskId}`): event types `progress`,
// `complete` and `error-event`, each a JSON {taskId, status, progress, result|error, timestamp}.
//
// EventSource retries by itself only while the server keeps answering with an event stream; a
// refused or failed response closes it for good. So every connection error here closes the
// EventSource and opens a new one after an exponential backoff (with jitter), reset by the next
// message. A task that ends (complete or error-event) is closed and forgotten.

const TERMINAL = new Set(['complete', 'error-event']);

export class SSEManager {
  constructor({
    baseDelayMs = 500,
    maxDelayMs = 15000,
    maxRetries = 10,
    urlFor = (taskId) => `/progress/${encodeURIComponent(taskId)}`,
    createEventSource = (url) => new EventSource(url),
  } = {}) {
    this.baseDelayMs = baseDelayMs;
    this.maxDelayMs = maxDelayMs;
    this.maxRetries = maxRetries;
    this.urlFor = urlFor;
    this.createEventSource = createEventSource;
    this._connections = new Map(); // taskId -> {eventSource, callbacks, attempts, timer, last}
  }

  /** callbacks: {onProgress, onComplete, onError, onConnection(state, info)}; returns unsubscribe. */
  subscribe(taskId, callbacks = {}) {
    this.unsubscribe(taskId);
    const entry = { callbacks, attempts: 0, timer: null, eventSource: null, last: null };
    this._connections.set(taskId, entry);
    this._connect(taskId);
    return () => this.unsubscribe(taskId);
  }

  unsubscribe(taskId) {
    this._cleanup(taskId);
  }

  /** The last payload received for a task still followed (null before the first). */
  lastUpdate(taskId) {
    return this._connections.get(taskId)?.last ?? null;
  }

  get activeTaskIds() {
    return [...this._connections.keys()];
  }

  /** The delay before reconnect attempt `attempt` (1-based): base * 2^(attempt-1), capped, +-20%. */
  backoffDelay(attempt, random = Math.random) {
    const exp = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** Math.max(0, attempt - 1));
    return Math.round(exp * (0.8 + 0.4 * random()));
  }

  _connect(taskId) {
    const entry = this._connections.get(taskId);
    if (!entry) return;
    entry.timer = null;
    const source = this.createEventSource(this.urlFor(taskId));
    entry.eventSource = source;
    this._notify(entry, 'connecting', { attempt: entry.attempts });
    source.onopen = () => this._notify(entry, 'open', { attempt: entry.attempts });
    for (const type of ['progress', 'complete', 'error-event']) {
      source.addEventListener(type, (event) => this._handleMessage(taskId, type, event));
    }
    source.onerror = (error) => this._handleError(taskId, error);
  }

  _handleMessage(taskId, type, event) {
    const entry = this._connections.get(taskId);
    if (!entry) return;
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      console.warn(`task ${taskId}: unreadable ${type} event`, event.data);
      return;
    }
    entry.attempts = 0; // a message proves the connection: the next failure starts the backoff anew
    entry.last = data;
    const { onProgress, onComplete, onError } = entry.callbacks;
    if (type === 'progress') onProgress?.(data);
    if (TERMINAL.has(type)) {
      this._cleanup(taskId);
      if (type === 'complete') onComplete?.(data);
      else onError?.(data);
    }
  }

  _handleError(taskId) {
    const entry = this._connections.get(taskId);
    if (!entry) return;
    entry.eventSource?.close();
    entry.eventSource = null;
    entry.attempts += 1;
    if (entry.attempts > this.maxRetries) {
      this._cleanup(taskId);
      entry.callbacks.onError?.({
        taskId,
        status: 'error',
        error: { message: 'Lost the connection to the task', details: `gave up after ${this.maxRetries} retries` },
      });
      return;
    }
    const delay = this.backoffDelay(entry.attempts);
    this._notify(entry, 'reconnecting', { attempt: entry.attempts, delayMs: delay });
    entry.timer = setTimeout(() => this._connect(taskId), delay);
  }

  _notify(entry, state, info) {
    try {
      entry.callbacks.onConnection?.(state, info);
    } catch (err) {
      console.warn('SSE onConnection callback failed', err);
    }
  }

  _cleanup(taskId) {
    const entry = this._connections.get(taskId);
    if (!entry) return;
    if (entry.timer) clearTimeout(entry.timer);
    entry.eventSource?.close();
    this._connections.delete(taskId);
  }
}

export const sseManager = new SSEManager();
