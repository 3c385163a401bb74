// A banner at the top of the page that follows one task over SSE (GET /progress/{taskId}) to its
// result or its error: percentage, current step in words, time left, connection state.

import { Component, html } from './vendor/htm-preact.js';
import { duration } from './format.js';
import { ProgressBar } from './ui.js';

/** Image URLs in a task result, whatever its shape: imageUrl(s), images [{url}|{filename,...}], outputs. */
export function resultImages(result) {
  const urls = [];
  const view = (img) =>
    `/view?${new URLSearchParams({ filename: img.filename, subfolder: img.subfolder || '', type: img.type || 'output' })}`;
  // The server's own list first (/tasks: images [{url, ...}], imageUrl); anything else is searched.
  if (Array.isArray(result?.images) && result.images.length) {
    return result.images.map((i) => (typeof i === 'string' ? i : i?.url || (i?.filename ? view(i) : null))).filter(Boolean);
  }
  if (typeof result?.imageUrl === 'string' && result.imageUrl) return [result.imageUrl];
  const visit = (value, depth) => {
    if (!value || depth > 4) return;
    if (typeof value === 'string') {
      if (/^(\/|https?:|data:image\/)/.test(value) && /(\.(png|jpe?g|webp|gif)(\?|$)|^\/view\?|^data:image\/)/i.test(value)) urls.push(value);
      return;
    }
    if (Array.isArray(value)) {
      for (const v of value) visit(v, depth + 1);
      return;
    }
    if (typeof value === 'object') {
      if (typeof value.filename === 'string') {
        urls.push(view(value));
        return;
      }
      for (const v of Object.values(value)) visit(v, depth + 1);
    }
  };
  visit(result, 0);
  return [...new Set(urls)];
}

export class ProgressBanner extends Component {
  constructor(props) {
    super(props);
    this.state = {
      isVisible: true,
      status: 'connecting', // connecting | in-progress | completed | error
      percentage: 0,
      message: 'Waiting for the task…',
      connection: 'connecting',
      retryInMs: null,
      result: null,
      error: null,
      etaS: null,
    };
  }

  /** The job store's time left for this task's prompt (measured node times of earlier runs of its
   * shape), or null: a rate from the percentage jumped as nodes of different speeds came and went. */
  etaFromStore() {
    const { store, taskId } = this.props;
    if (!store) return null;
    for (const job of store.jobs.values()) if (job.taskId === taskId) return job.etaS;
    return null;
  }

  componentDidMount() {
    const { taskId, sseManager, store } = this.props;
    this.unsubscribeStore = store?.subscribe(() => {
      if (this.state.status === 'in-progress') this.setState({ etaS: this.etaFromStore() });
    });
    this.unsubscribe = sseManager.subscribe(taskId, {
      onProgress: (data) => this.handleProgressUpdate(data),
      onComplete: (data) => this.handleComplete(data),
      onError: (data) => this.handleError(data),
      onConnection: (connection, info) => this.setState({ connection, retryInMs: info?.delayMs ?? null }),
    });
  }

  componentWillUnmount() {
    this.unsubscribe?.();
    this.unsubscribeStore?.();
  }

  handleDismiss = () => {
    this.unsubscribe?.();
    this.setState({ isVisible: false });
    this.props.onDismiss?.(this.props.taskId);
  };

  handleProgressUpdate(data) {
    const progress = data.progress || {};
    const percentage = Number(progress.percentage) || 0;
    const etaS = percentage < 100 ? this.etaFromStore() : null;
    this.setState({
      status: 'in-progress',
      percentage,
      message: progress.currentStep || 'Working…',
      etaS,
      connection: 'open',
    });
  }

  handleComplete(data) {
    this.setState({
      status: 'completed',
      percentage: 100,
      message: data.progress?.currentStep || 'Complete',
      result: data.result ?? null,
      etaS: null,
    });
    this.props.onComplete?.(data);
  }

  handleError(data) {
    const error = data?.error || {};
    this.setState({
      status: 'error',
      message: data?.progress?.currentStep || 'Failed',
      error: typeof error === 'string' ? { message: error } : error,
      etaS: null,
    });
    this.props.onError?.(data);
  }

  render({ taskId, label }, state) {
    if (!state.isVisible) return null;
    const images = state.status === 'completed' ? resultImages(state.result) : [];
    const barStatus = state.status === 'error' ? 'error' : state.status === 'completed' ? 'success' : 'running';
    return html`<div class=${`banner banner-${state.status}`} data-testid="progress-banner" data-task-id=${taskId} data-status=${state.status}>
      <div class="banner-row">
        <b class="banner-title">${label || 'Task'}</b>
        <span class="mono muted small">${taskId}</span>
        <span class="banner-message" data-testid="banner-message">${state.message}</span>
        ${state.etaS != null && html`<span class="muted small">~${duration(state.etaS)} left</span>`}
        ${state.connection === 'reconnecting' && state.status !== 'completed' && state.status !== 'error' &&
        html`<span class="warn small">reconnecting${state.retryInMs ? ` in ${duration(state.retryInMs / 1000)}` : ''}…</span>`}
        <span class="grow"></span>
        <div class="banner-bar"><${ProgressBar} value=${state.percentage / 100} status=${barStatus} label="task progress" /></div>
        <button class="ghost" aria-label="dismiss" data-testid="banner-dismiss" onClick=${this.handleDismiss}>✕</button>
      </div>
      ${state.status === 'error' &&
      html`<div class="banner-detail err" data-testid="banner-error">${state.error?.message || 'The task failed'}${state.error?.details ? html`: <span class="mono">${String(state.error.details).slice(0, 500)}</span>` : ''}</div>`}
      ${state.status === 'completed' &&
      html`<div class="banner-detail" data-testid="banner-result">
        ${images.length
          ? images.map((src) => html`<a href=${src} target="_blank" rel="noopener"><img class="thumb" src=${src} alt="result" /></a>`)
          : html`<span class="mono small">${state.result == null ? 'Done (no result)' : JSON.stringify(state.result).slice(0, 400)}</span>`}
      </div>`}
    </div>`;
  }
}
