// Streams panel: every stream (trickle and WebRTC) from GET /streams, polled, each with its state,
// architecture, worker, rates, drops, latency and a live preview of its output.

import { html, useCallback, useEffect, useRef, useState } from './vendor/htm-preact.js';
import { api, getJSON } from './api.js';
import { duration, fixed, shortId } from './format.js';
import { PromptEditor } from './prompt-editor.js';
import { ConfirmButton, Pill, toast } from './ui.js';

const POLL_MS = 1000;
const PREVIEW_MS = 500;
const ARCHITECTURES = {
  dedicated_worker_per_stream: 'dedicated worker',
  prompt_worker_per_prompt: 'worker per prompt',
  shared_pipeline: 'shared pipeline',
};
const STATE_KIND = { running: 'ok', starting: 'warn', stopping: 'warn', stopped: 'muted', error: 'err' };

const TRANSPORTS = { trickle: 'trickle', webrtc: 'WebRTC' };

/** The stream's latest output frame, refreshed: one request at a time, paused while the tab is hidden. */
function Preview({ streamId, live, width, height }) {
  const [src, setSrc] = useState(null);
  const current = useRef(null);
  useEffect(() => {
    if (!live) return undefined;
    const controller = new AbortController();
    let timer = null;
    const next = () => {
      timer = setTimeout(load, document.hidden ? PREVIEW_MS * 4 : PREVIEW_MS);
    };
    const load = async () => {
      try {
        const response = await fetch(`/stream/${encodeURIComponent(streamId)}/preview.jpg?w=320`, {
          cache: 'no-store',
          signal: controller.signal,
        });
        if (response.status === 200) {
          const url = URL.createObjectURL(await response.blob());
          if (current.current) URL.revokeObjectURL(current.current);
          current.current = url;
          setSrc(url);
        }
      } catch (err) {
        if (err.name === 'AbortError') return;
      }
      if (!controller.signal.aborted) next();
    };
    load();
    return () => {
      controller.abort();
      clearTimeout(timer);
    };
  }, [streamId, live]);
  useEffect(() => () => current.current && URL.revokeObjectURL(current.current), []);
  const ratio = width && height ? `${width} / ${height}` : '1 / 1';
  return html`<div class="preview" style=${{ aspectRatio: ratio }}>
    ${src
      ? html`<img src=${src} alt=${`latest output of ${streamId}`} data-testid="stream-preview" />`
      : html`<span class="preview-empty">${live ? 'waiting for the first frame' : 'no preview'}</span>`}
  </div>`;
}

function Stat({ label, children, warn }) {
  return html`<div class=${`stat ${warn ? 'stat-warn' : ''}`}><dt>${label}</dt><dd>${children}</dd></div>`;
}

// Streams that ended by themselves stay on the page, with their reason, until dismissed; what was
// dismissed is remembered per browser (a stream id with its start time: ids may be reused).
const DISMISSED_KEY = 'comfystream.dismissedStreams';
const endedKey = (info) => `${info.stream_id}@${info.created_at}`;
function loadDismissed() {
  try {
    return new Set(JSON.parse(localStorage.getItem(DISMISSED_KEY) || '[]'));
  } catch {
    return new Set();
  }
}

function EndedCard({ info, onDismiss }) {
  const failed = info.state === 'error';
  const reason = info.error || info.stop_reason || 'ended';
  return html`<article class=${`card stream ended ${failed ? 'failed' : ''}`} data-testid="ended-stream-card"
      data-stream-id=${info.stream_id} data-state=${info.state}>
    <header class="card-head">
      <span class="mono strong" title=${info.stream_id}>${shortId(info.stream_id, 18)}</span>
      <${Pill} kind=${failed ? 'err' : 'muted'}>${failed ? 'failed' : 'ended'}<//>
      <span class="tag">${TRANSPORTS[info.transport] || info.transport}</span>
      <span class="grow"></span>
      <span class="muted small">after ${duration(info.uptime_s)}</span>
    </header>
    <div class=${failed ? 'error-line' : 'muted small ended-reason'} data-testid="ended-reason">${reason}</div>
    <footer class="card-foot">
      <span class="grow"></span>
      <button data-testid="dismiss-stream" onClick=${() => onDismiss(info)}>Dismiss</button>
    </footer>
  </article>`;
}

function StreamCard({ info, stopping, onStop, onEdit, stale }) {
  const stats = info.stats || {};
  const config = info.config || {};
  const workers = info.workers || [];
  const active = workers.find((w) => w.active) || workers[0];
  const live = info.state === 'running' || info.state === 'starting';
  const restarts = workers.reduce((n, w) => n + (w.restarts || 0), 0);
  const p50 = stats.latency_ms_p50;
  const p99 = stats.latency_ms_p99;
  return html`<article class=${`card stream ${stale ? 'stale' : ''}`} data-testid="stream-card" data-stream-id=${info.stream_id}
      data-stale=${stale ? 'true' : 'false'} title=${stale ? 'the server is not answering: this is the last state it reported' : ''}>
    <header class="card-head">
      <span class="mono strong" title=${info.stream_id}>${shortId(info.stream_id, 18)}</span>
      <${Pill} kind=${stale ? 'muted' : STATE_KIND[info.state] || 'muted'}>${stale ? `${info.state}?` : stopping ? 'stopping' : info.state}<//>
      <span class="tag">${TRANSPORTS[info.transport] || info.transport}</span>
      <span class="tag" title=${config.pipeline_type}>${ARCHITECTURES[config.architecture] || config.architecture}</span>
      <span class="grow"></span>
      <span class="muted small">${config.width}×${config.height}</span>
    </header>
    <div class="stream-body">
      <${Preview} streamId=${info.stream_id} live=${live && !stopping && !stale} width=${config.width} height=${config.height} />
      <dl class="stats">
        <${Stat} label="fps in / out">${fixed(stats.fps_in)} / ${fixed(stats.fps_out)}<//>
        <${Stat} label="latency p50 / p99">${p50 == null ? '–' : `${fixed(p50, 0)} / ${fixed(p99, 0)} ms`}<//>
        <${Stat} label="dropped" warn=${stats.dropped > 0}>${stats.dropped ?? 0}<span class="muted"> of ${stats.received ?? 0}</span><//>
        <${Stat} label="processed">${stats.processed ?? 0}${stats.passed_through ? html`<span class="muted"> +${stats.passed_through} passed</span>` : ''}<//>
        <${Stat} label="worker">${active ? html`<span class="mono">pid ${active.pid ?? '–'}</span> · ${active.device || '?'}` : '–'}<//>
        <${Stat} label="worker state / restarts" warn=${restarts > 0}>${active?.state || '–'} / ${restarts}<//>
        <${Stat} label="prompts">${info.prompts_count}${info.prompt_updates ? html`<span class="muted"> · ${info.prompt_updates} updates</span>` : ''}<//>
        <${Stat} label="uptime">${duration(info.uptime_s)}<//>
      </dl>
    </div>
    ${info.error && html`<div class="error-line">${info.error}</div>`}
    ${info.notice && html`<div class="notice-line" data-testid="stream-notice">${info.notice}</div>`}
    <footer class="card-foot">
      ${stats.mismatched ? html`<span class="warn small">${stats.mismatched} mismatched frames</span>` : ''}
      <span class="grow"></span>
      <button data-testid="edit-prompts" disabled=${info.state !== 'running' || stopping} onClick=${() => onEdit(info.stream_id)}>Edit prompts</button>
      <button class="danger" data-testid="stop-stream" disabled=${stopping || !live} onClick=${() => onStop(info.stream_id)}>Stop</button>
    </footer>
  </article>`;
}

export function StreamsPanel() {
  const [data, setData] = useState({ streams: [], ended: [], count: 0, max_streams: null });
  const [error, setError] = useState(null);
  const [goneSince, setGoneSince] = useState(null); // the server stopped answering (network error)
  const [stopping, setStopping] = useState(() => new Set());
  const [editing, setEditing] = useState(null);
  const [dismissed, setDismissed] = useState(loadDismissed);

  const poll = useCallback(async () => {
    try {
      setData(await getJSON('/streams'));
      setError(null);
      setGoneSince(null);
    } catch (err) {
      setError(err.message);
      // No answer at all: the cards are what the server said last, not what runs now.
      if (err.status === 0) setGoneSince((since) => since || new Date());
    }
  }, []);

  const dismiss = useCallback((info) => {
    setDismissed((old) => {
      const next = new Set(old).add(endedKey(info));
      const known = new Set((data.ended || []).map(endedKey));
      // Only what the server still lists needs remembering.
      const kept = [...next].filter((k) => known.has(k));
      try {
        localStorage.setItem(DISMISSED_KEY, JSON.stringify(kept));
      } catch {
        /* private mode: dismissed for this page only */
      }
      return next;
    });
  }, [data]);

  useEffect(() => {
    let timer;
    const loop = async () => {
      await poll();
      timer = setTimeout(loop, document.hidden ? POLL_MS * 4 : POLL_MS);
    };
    loop();
    return () => clearTimeout(timer);
  }, [poll]);

  const stop = useCallback(
    async (id) => {
      setStopping((s) => new Set(s).add(id));
      try {
        await api('DELETE', `/stream/${encodeURIComponent(id)}`);
        toast(`Stream ${shortId(id, 18)} stopped`, 'ok');
      } catch (err) {
        if (err.status !== 404) toast(`Stopping ${shortId(id, 18)} failed: ${err.message}`, 'err');
      } finally {
        setStopping((s) => {
          const next = new Set(s);
          next.delete(id);
          return next;
        });
        poll();
      }
    },
    [poll],
  );

  const streams = data.streams || [];
  const running = new Set(streams.map((s) => s.stream_id));
  const ended = (data.ended || []).filter((s) => !dismissed.has(endedKey(s)) && !running.has(s.stream_id)).reverse();
  const stale = goneSince !== null;
  const live = stale ? [] : streams.filter((s) => s.state === 'running' || s.state === 'starting');
  const stopAll = () => Promise.all(live.map((s) => stop(s.stream_id)));

  return html`<section class="panel" data-testid="streams-panel">
    <header class="panel-head">
      <h2>Streams</h2>
      <span class="count" data-testid="stream-count">${streams.length}${data.max_streams ? ` / ${data.max_streams}` : ''}</span>
      <span class="grow"></span>
      ${error && html`<span class="err small" data-testid="streams-error">${stale
        ? `server not answering since ${goneSince.toLocaleTimeString()}: the cards show its last report`
        : error}</span>`}
      <${ConfirmButton} class="danger" testid="stop-all-streams" disabled=${!live.length}
        confirmText=${`Stop ${live.length}?`} onConfirm=${stopAll}>Stop all<//>
    </header>
    ${streams.length || ended.length
      ? html`<div class="stream-grid">
          ${ended.map((s) => html`<${EndedCard} key=${endedKey(s)} info=${s} onDismiss=${dismiss} />`)}
          ${streams.map((s) => html`<${StreamCard} key=${s.stream_id} info=${s} stopping=${stopping.has(s.stream_id)}
            onStop=${stop} onEdit=${setEditing} stale=${stale} />`)}
        </div>`
      : html`<div class="empty">No streams. Start one with <code>POST /stream/start</code>, or over WebRTC from <a href="/webrtc">/webrtc</a>.</div>`}
    ${editing && html`<${PromptEditor} streamId=${editing} onClose=${() => setEditing(null)} onApplied=${poll} />`}
  </section>`;
}
