// The dashboard: streams and jobs at a glance. Plain ES modules served by the server (no build step).

import { html, render, useEffect, useState } from './vendor/htm-preact.js';
import { getJSON } from './api.js';
import { clientId } from './client-id.js';
import { shortId } from './format.js';
import { JobsFeed } from './jobs-feed.js';
import { JobStore } from './jobs-store.js';
import { JobsPanel } from './jobs.js';
import { ProgressBanner } from './progress-banner.js';
import { sseManager } from './sse-manager.js';
import { StreamsPanel } from './streams.js';
import { summarize, TabIndicator } from './tab-indicator.js';
import { Toasts, toast } from './ui.js';

const store = new JobStore(clientId);
const feed = new JobsFeed(store);
const indicator = new TabIndicator();
store.subscribe(() => indicator.update(summarize([...store.jobs.values()])));
indicator.update(summarize([]));

function FeedDot() {
  const [state, setState] = useState(feed.state);
  useEffect(() => feed.onState(() => setState(feed.state)), []);
  const words = { open: 'live', connecting: 'connecting…', closed: 'reconnecting…' };
  return html`<span class=${`dot dot-${state}`} data-testid="feed-state" data-state=${state} title="job events (GET /jobs/events)">${words[state] || state}</span>`;
}

function Health() {
  const [health, setHealth] = useState(null);
  useEffect(() => {
    let timer;
    const load = async () => {
      try {
        setHealth(await getJSON('/health'));
      } catch {
        setHealth(null);
      }
      timer = setTimeout(load, 10000);
    };
    load();
    return () => clearTimeout(timer);
  }, []);
  if (!health) return null;
  const errors = Object.keys(health.node_load_errors || {}).length;
  return html`<span class="muted small" title=${errors ? Object.keys(health.node_load_errors).join('\n') : ''}>
    v${health.version} · ${health.node_types} node types${errors ? html` · <span class="warn">${errors} node package(s) failed</span>` : ''}
  </span>`;
}

function App() {
  const [tasks, setTasks] = useState(() => {
    const wanted = new URLSearchParams(location.search).get('task');
    return wanted ? [{ taskId: wanted, label: 'Task' }] : [];
  });
  const addTask = (taskId, label) => {
    if (!taskId) return;
    setTasks((list) => [...list.filter((t) => t.taskId !== taskId), { taskId, label }]);
  };
  const dropTask = (taskId) => setTasks((list) => list.filter((t) => t.taskId !== taskId));

  return html`
    <header class="topbar">
      <span class="brand">comfystream</span>
      <span class="muted small">dashboard</span>
      <${Health} />
      <a class="small" href="/comfyui/" data-testid="editor-link" title="The ComfyUI editor: design a workflow, run it, send it to a stream">ComfyUI editor</a>
      <span class="grow"></span>
      <${FeedDot} />
      <span class="this-tab" data-testid="client-id" title=${clientId}>this tab: <span class="mono">${shortId(clientId, 6)}</span></span>
    </header>
    ${tasks.length > 0 &&
    html`<div class="banners">
      ${tasks.map(
        (t) => html`<${ProgressBanner} key=${t.taskId} taskId=${t.taskId} label=${t.label} sseManager=${sseManager} store=${store}
          onDismiss=${dropTask}
          onComplete=${() => {
            toast(`Task ${shortId(t.taskId, 10)} complete`, 'ok');
            feed.refresh(0);
          }}
          onError=${(data) => toast(`Task ${shortId(t.taskId, 10)}: ${data?.error?.message || 'failed'}`, 'err')} />`,
      )}
    </div>`}
    <main class="layout">
      <${StreamsPanel} />
      <${JobsPanel} store=${store} feed=${feed} clientId=${clientId} onTask=${addTask} />
    </main>
    <${Toasts} />
  `;
}

feed.start();
render(html`<${App} />`, document.getElementById('app'));

// For the browser tests and for poking at from the console.
window.__dashboard = { store, feed, clientId, sseManager };
