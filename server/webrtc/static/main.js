// The /webrtc page: pick a source and a prompt, start, and watch the processed video beside the original.
import { Connection } from "/webrtc/connection.js";
import { PRESETS } from "/webrtc/presets.js";
import { startTestPattern } from "/webrtc/testpattern.js";

const $ = (id) => document.getElementById(id);
const ui = {
  source: $("source"), preset: $("preset"), prompt: $("prompt"), resolution: $("resolution"), codec: $("codec"),
  start: $("start"), stop: $("stop"), apply: $("apply"), pause: $("pause"),
  original: $("original"), processed: $("processed"), status: $("status"), streamId: $("stream-id"),
  stats: $("stats"), log: $("log"),
};

let session = null; // { connection, source, statsTimer, paused }

function setStatus(text, state = "idle") {
  ui.status.textContent = text;
  ui.status.dataset.state = state;
}

function log(text, isError = false) {
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  if (isError) item.className = "error";
  ui.log.prepend(item);
}

function selectedSize() {
  const [width, height] = ui.resolution.value.split("x").map(Number);
  return { width, height };
}

function promptFromBox() {
  try {
    return JSON.parse(ui.prompt.value);
  } catch (err) {
    throw new Error(`the prompt is not valid JSON: ${err.message}`);
  }
}

async function listCameras() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  try {
    // Labels are only visible once the page may use the camera; ask once, release at once.
    const probe = await navigator.mediaDevices.getUserMedia({ video: true });
    probe.getTracks().forEach((t) => t.stop());
  } catch {
    return; // no camera or no permission: the test pattern stays
  }
  const devices = await navigator.mediaDevices.enumerateDevices();
  devices.filter((d) => d.kind === "videoinput").forEach((d, i) => {
    const option = document.createElement("option");
    option.value = `camera:${d.deviceId}`;
    option.textContent = d.label || `Camera ${i + 1}`;
    ui.source.append(option);
  });
}

async function openSource({ width, height }) {
  if (ui.source.value === "pattern") return startTestPattern(width, height);
  const deviceId = ui.source.value.slice("camera:".length);
  const stream = await navigator.mediaDevices.getUserMedia({
    video: { deviceId: deviceId ? { exact: deviceId } : undefined, width: { ideal: width }, height: { ideal: height } },
    audio: false,
  });
  return { stream, stop: () => stream.getTracks().forEach((t) => t.stop()) };
}

function showStats(stats) {
  const rows = [
    ["fps", stats.fps?.toFixed?.(1)],
    ["received", stats.video_received ?? stats.received],
    ["processed", stats.processed],
    ["dropped", stats.dropped],
    ["latency p50", stats.latency_ms_p50 != null ? `${Number(stats.latency_ms_p50).toFixed(1)} ms` : "–"],
    ["latency p99", stats.latency_ms_p99 != null ? `${Number(stats.latency_ms_p99).toFixed(1)} ms` : "–"],
    ["mode", stats.mode],
  ];
  ui.stats.replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v ?? "–";
    return [dt, dd];
  }));
}

// The same JSON whatever the order of its keys: to tell which preset a stream's prompt is.
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value && typeof value === "object") {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

// What the stream runs now (another page, the editor or the API may have changed it): the menu and
// the box follow it.
async function showRunningPrompt(streamId) {
  const response = await fetch(`/stream/${encodeURIComponent(streamId)}/prompts`, { cache: "no-store" });
  if (!response.ok) return;
  const { prompts } = await response.json();
  const running = prompts?.[0];
  if (!running || !session || session.connection.streamId !== streamId) return;
  const key = canonical(running);
  const preset = Object.entries(PRESETS).find(([, p]) => canonical(p.prompt) === key);
  ui.preset.value = preset ? preset[0] : "custom";
  ui.prompt.value = JSON.stringify(running, null, 2);
}

// Polled every second: the stream's stats, its prompt, and whether the server still has it. A server
// that is gone (or that ended the stream) shows at the next poll, not when ICE gives up (5-8 s).
async function pollStats() {
  if (!session?.connection.streamId) return;
  const streamId = session.connection.streamId;
  let response;
  try {
    response = await fetch(`/stream/${encodeURIComponent(streamId)}`, { cache: "no-store" });
  } catch {
    if (session) setStatus("disconnected: the server is not answering", "error");
    return;
  }
  if (response.status === 404) {
    setStatus("disconnected: the server has no such stream any more", "error");
    return;
  }
  if (!response.ok) return;
  const info = await response.json();
  if (!session) return;
  if (info.state === "stopped" || info.state === "error") {
    setStatus(`disconnected: the stream ${info.state === "error" ? "failed" : "ended"} (${info.error || info.stop_reason || "no reason given"})`, "error");
    return;
  }
  if (ui.status.dataset.state === "error" && ui.status.textContent.startsWith("disconnected")) {
    setStatus(session.connection.pc.connectionState, "connected"); // the server answers again
  }
  showStats(info.stats ?? {});
  if (info.prompt_updates !== session.promptUpdates) {
    session.promptUpdates = info.prompt_updates;
    await showRunningPrompt(streamId).catch(() => {});
  }
}

async function start() {
  ui.start.disabled = true;
  setStatus("connecting…");
  try {
    const config = await fetch("/webrtc/config").then((r) => r.json());
    const size = selectedSize();
    const source = await openSource(size);
    ui.original.srcObject = source.stream;
    const connection = new Connection({ iceServers: config.iceServers || [] });
    session = { connection, source, statsTimer: null, paused: false, promptUpdates: 0 };
    connection.addEventListener("track", ({ detail }) => {
      if (detail.track.kind === "video") ui.processed.srcObject = detail.streams[0] || new MediaStream([detail.track]);
    });
    connection.addEventListener("state", ({ detail }) => {
      const said = ui.status.textContent.startsWith("disconnected") && ui.status.dataset.state === "error";
      if (said && detail !== "connected" && detail !== "failed") return; // the poll's reason stays
      setStatus(detail, detail === "connected" ? "connected" : detail === "failed" ? "error" : "idle");
      if (detail === "failed" || detail === "closed") stop();
    });
    connection.addEventListener("control", ({ detail }) => {
      log(`${detail.type}: ${detail.success ? "ok" : detail.error}`, !detail.success);
    });
    await connection.connect(source.stream, {
      prompts: [promptFromBox()],
      resolution: size,
      codec: ui.codec.value,
    });
    ui.streamId.textContent = connection.streamId ? `(${connection.streamId})` : "";
    log(`stream ${connection.streamId} started`);
    session.statsTimer = setInterval(pollStats, 1000);
    ui.stop.disabled = ui.apply.disabled = ui.pause.disabled = false;
  } catch (err) {
    log(String(err.message || err), true);
    setStatus("error", "error");
    stop();
  }
}

function stop() {
  if (!session) return;
  clearInterval(session.statsTimer);
  session.connection.close();
  session.source.stop();
  session = null;
  ui.original.srcObject = null;
  ui.processed.srcObject = null;
  ui.start.disabled = false;
  ui.stop.disabled = ui.apply.disabled = ui.pause.disabled = true;
  ui.pause.textContent = "Pause";
  if (ui.status.dataset.state !== "error") setStatus("idle");
}

async function applyPrompt() {
  if (!session) return;
  try {
    await session.connection.request("update_prompts", { prompts: [promptFromBox()] });
  } catch (err) {
    log(String(err.message || err), true);
  }
}

async function togglePause() {
  if (!session) return;
  const reply = await session.connection.request(session.paused ? "resume_prompts" : "pause_prompts");
  if (reply.success) {
    session.paused = !session.paused;
    ui.pause.textContent = session.paused ? "Resume" : "Pause";
  }
}

function init() {
  for (const [key, preset] of Object.entries(PRESETS)) {
    const option = document.createElement("option");
    option.value = key;
    option.textContent = preset.label;
    ui.preset.append(option);
  }
  const custom = document.createElement("option");
  custom.value = "custom";
  custom.textContent = "Custom (JSON below)";
  ui.preset.append(custom);
  const showPreset = () => {
    const preset = PRESETS[ui.preset.value];
    if (preset) ui.prompt.value = JSON.stringify(preset.prompt, null, 2);
  };
  ui.preset.addEventListener("change", showPreset);
  ui.prompt.addEventListener("input", () => { ui.preset.value = "custom"; });
  showPreset();
  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", stop);
  ui.apply.addEventListener("click", applyPrompt);
  ui.pause.addEventListener("click", togglePause);
  listCameras();
  window.comfystream = { get session() { return session; }, start, stop }; // for scripted use and tests
}

init();
