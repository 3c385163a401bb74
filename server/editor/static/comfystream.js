// comfystream's extension for the ComfyUI editor: a "Streams" sidebar tab that lists the server's
// running streams with a live preview, and runs the workflow open in the editor on a chosen stream.
// The editor converts its graph to an API prompt (app.graphToPrompt, as for Run); the server turns
// its image input and output into the stream's frame input and output and swaps it in. When the
// server rejects it, its node_errors are shown on the nodes as for a rejected Run, and the stream
// keeps running its old prompt.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const REFRESH_MS = 1000;
// The stream API lives at the site root (/streams), the editor's API under its own base (/comfyui/api).
const ROOT = api.api_base.replace(/\/comfyui$/, "");

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "style") Object.assign(node.style, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

function toast(severity, summary, detail) {
  const t = app.extensionManager?.toast;
  if (t) t.add({ severity, summary, detail, life: 6000 });
}

// The editor's own error store (pinia id "executionError"): what a rejected Run fills, so the nodes
// are outlined and the errors panel lists them. Reached through the page's Vue app.
function errorStore() {
  const pinia = document.getElementById("vue-app")?.__vue_app__?.config?.globalProperties?.$pinia;
  return pinia?._s?.get("executionError") ?? null;
}

function showNodeErrors(nodeErrors, promptError) {
  const store = errorStore();
  if (store) {
    store.recordNodeErrors(nodeErrors && Object.keys(nodeErrors).length ? nodeErrors : null);
    if (promptError && (!nodeErrors || !Object.keys(nodeErrors).length)) store.recordPromptError?.(promptError);
  }
  app.canvas?.draw(true, true);
}

export async function applyToStream(streamId) {
  const { output } = await app.graphToPrompt();
  const res = await fetch(api.apiURL(`/comfystream/streams/${encodeURIComponent(streamId)}/prompt`), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ prompt: output }),
  });
  const body = await res.json().catch(() => ({}));
  if (res.ok) {
    showNodeErrors(null, null);
    toast("success", "Workflow applied", `Stream ${streamId} now runs this workflow.`);
  } else {
    const error = typeof body.error === "object" ? body.error : { message: body.message || body.error };
    showNodeErrors(body.node_errors || null, error);
    const perNode = Object.entries(body.node_errors || {}).flatMap(([id, e]) =>
      (e.errors || []).map((x) => `#${id} ${e.class_type}: ${x.message}${x.details ? ` (${x.details})` : ""}`));
    const detail = perNode.length ? perNode.join("\n") : [error?.message, error?.details].filter(Boolean).join(": ");
    toast("error", `Stream ${streamId} kept its prompt`, detail || `HTTP ${res.status}`);
  }
  return { ok: res.ok, status: res.status, body };
}

function streamCard(stream) {
  const id = stream.stream_id;
  const img = el("img", {
    alt: `preview of ${id}`,
    "data-testid": "comfystream-preview",
    style: { width: "100%", background: "#000", minHeight: "60px", display: "block" },
  });
  const button = el("button", { class: "p-button p-component p-button-sm", "data-testid": "comfystream-apply" }, "Run this workflow on it");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await applyToStream(id);
    } finally {
      button.disabled = false;
    }
  });
  const card = el(
    "div",
    { "data-testid": "comfystream-stream", "data-stream-id": id, style: { padding: "8px", borderBottom: "1px solid var(--border-color, #333)" } },
    el("div", { style: { fontWeight: "600", marginBottom: "4px" } }, id),
    el("div", { class: "comfystream-state", style: { fontSize: "12px", opacity: 0.8, marginBottom: "4px" } }),
    img,
    el("div", { style: { marginTop: "6px" } }, button),
  );
  card.update = (s) => {
    const c = s.config || {};
    card.querySelector(".comfystream-state").textContent =
      `${s.state} · ${c.width ?? "?"}x${c.height ?? "?"} · ${s.stats?.fps_out?.toFixed?.(1) ?? "0"} fps`;
    if (!img.dataset.loading) {  // one preview request at a time per stream
      img.dataset.loading = "1";
      const next = new Image();
      next.onload = next.onerror = () => {
        delete img.dataset.loading;
        if (next.naturalWidth) img.src = next.src;
      };
      next.src = `${ROOT}/stream/${encodeURIComponent(id)}/preview.jpg?t=${Date.now()}`;
    }
  };
  return card;
}

function renderStreams(container) {
  const list = el("div", { "data-testid": "comfystream-streams" });
  const empty = el("div", { style: { padding: "8px", opacity: 0.7 } }, "No stream is running.");
  container.append(el("div", { style: { padding: "8px", fontWeight: "600" } }, "Live streams"), empty, list);
  const cards = new Map();
  let timer = null;
  async function refresh() {
    if (!container.isConnected) {
      clearInterval(timer);
      return;
    }
    let streams = [];
    try {
      const res = await fetch(`${ROOT}/streams`);
      if (res.ok) streams = (await res.json()).streams || [];
    } catch {
      return;  // the server is restarting: the next tick tries again
    }
    const running = streams.filter((s) => s.state !== "stopped" && s.state !== "error");
    empty.style.display = running.length ? "none" : "";
    const seen = new Set();
    for (const s of running) {
      seen.add(s.stream_id);
      if (!cards.has(s.stream_id)) {
        const card = streamCard(s);
        cards.set(s.stream_id, card);
        list.append(card);
      }
      cards.get(s.stream_id).update(s);
    }
    for (const [id, card] of cards) {
      if (!seen.has(id)) {
        card.remove();
        cards.delete(id);
      }
    }
  }
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

// Asked as soon as this script loads, so that `init` (which runs before the first graph is loaded)
// need not wait for it: the server's engine, and the workflow a first visit should open there.
const editorDefaults = fetch(api.apiURL("/comfystream/editor"), { cache: "no-store" })
  .then((r) => (r.ok ? r.json() : null))
  .catch(() => null);

// With the built-in engine, ComfyUI's default workflow (checkpoint, prompts, KSampler) is nine
// missing nodes. The frontend opens (and "new default workflow" loads) its one default-graph object,
// so that object is given the server's workflow in place, before the first graph is loaded.
async function useServersDefaultWorkflow() {
  const defaults = await editorDefaults;
  const holder = window.comfyAPI?.defaultGraph;
  const graph = holder?.defaultGraph;
  if (!defaults?.default_workflow || !graph || typeof graph !== "object") return;
  for (const key of Object.keys(graph)) delete graph[key];
  Object.assign(graph, structuredClone(defaults.default_workflow));
}

function missingNodeHint(types, engine) {
  const names = [...new Set(types.map((t) => (typeof t === "string" ? t : t?.type)).filter(Boolean))];
  if (!names.length) return;
  const how = engine === "workspace"
    ? "Install their node package into the workspace's custom_nodes folder (or pass --custom-nodes FOLDER) and restart comfystream."
    : "This server runs its built-in engine (image and stream nodes). ComfyUI's model nodes need a ComfyUI workspace: `comfystream serve --workspace DIR` (`comfystream setup-workspace DIR` makes one); other packages: --custom-nodes FOLDER.";
  toast("warn", `Missing nodes here: ${names.slice(0, 6).join(", ")}${names.length > 6 ? ", ..." : ""}`, how);
}

app.registerExtension({
  name: "comfystream.Streams",
  async init() {
    await useServersDefaultWorkflow();
  },
  async afterConfigureGraph(missingNodeTypes) {
    if (missingNodeTypes?.length) missingNodeHint(missingNodeTypes, (await editorDefaults)?.engine);
  },
  async setup() {
    app.extensionManager.registerSidebarTab({
      id: "comfystream-streams",
      icon: "pi pi-video",
      title: "Streams",
      tooltip: "comfystream: live streams",
      type: "custom",
      render: (container) => renderStreams(container),
    });
    window.comfystream = { applyToStream };
  },
});
