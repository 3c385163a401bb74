// One peer connection to the server: POST /offer (after ICE gathering, no trickle ICE), the
// processed video back, and the `control` data channel with request/reply matching by id.

async function waitForIceGathering(pc, timeoutMs = 5000) {
  if (pc.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs); // send what we have: host candidates come first
  });
}

function preferCodec(transceiver, mimeType) {
  if (!mimeType || !RTCRtpReceiver.getCapabilities || !transceiver.setCodecPreferences) return;
  const codecs = RTCRtpReceiver.getCapabilities("video").codecs;
  const preferred = codecs.filter((c) => c.mimeType.toLowerCase() === mimeType.toLowerCase());
  const rest = codecs.filter((c) => c.mimeType.toLowerCase() !== mimeType.toLowerCase());
  if (preferred.length) transceiver.setCodecPreferences([...preferred, ...rest]);
}

export class Connection extends EventTarget {
  constructor({ iceServers = [] } = {}) {
    super();
    this.pc = new RTCPeerConnection({ iceServers });
    this.streamId = null;
    this.pending = new Map();
    this.nextId = 1;
    this.control = this.pc.createDataChannel("control");
    this.controlOpen = new Promise((resolve) => this.control.addEventListener("open", resolve, { once: true }));
    this.control.addEventListener("message", (event) => this.#onControl(event.data));
    this.pc.addEventListener("track", (event) => {
      this.dispatchEvent(new CustomEvent("track", { detail: event }));
    });
    this.pc.addEventListener("connectionstatechange", () => {
      this.dispatchEvent(new CustomEvent("state", { detail: this.pc.connectionState }));
    });
  }

  async connect(mediaStream, { prompts, resolution, codec } = {}) {
    for (const track of mediaStream.getTracks()) {
      const transceiver = this.pc.addTransceiver(track, { direction: "sendrecv", streams: [mediaStream] });
      if (track.kind === "video") preferCodec(transceiver, codec);
    }
    await this.pc.setLocalDescription(await this.pc.createOffer());
    await waitForIceGathering(this.pc);
    const body = { offer: { sdp: this.pc.localDescription.sdp, type: this.pc.localDescription.type } };
    if (prompts) body.prompts = prompts;
    if (resolution) body.resolution = resolution;
    const response = await fetch("/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = (answer.validation_errors || []).map((e) => e.message).join("; ");
      throw new Error(`${answer.error || response.status}: ${answer.message || ""}${detail ? ` (${detail})` : ""}`);
    }
    this.streamId = answer.stream_id || null;
    await this.pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    return answer;
  }

  // Send a control request; resolves with its reply.
  async request(type, fields = {}) {
    await this.controlOpen;
    const id = this.nextId++;
    const reply = new Promise((resolve) => this.pending.set(id, resolve));
    this.control.send(JSON.stringify({ type, id, ...fields }));
    return reply;
  }

  #onControl(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    const resolve = this.pending.get(message.id);
    if (resolve) {
      this.pending.delete(message.id);
      resolve(message);
    }
    this.dispatchEvent(new CustomEvent("control", { detail: message }));
  }

  close() {
    for (const t of this.pc.getSenders()) t.track && t.track.stop();
    this.pc.close();
  }
}
