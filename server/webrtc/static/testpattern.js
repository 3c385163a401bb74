// A synthetic camera: four coloured quadrants (so processing is easy to see and to check), a bar
// sweeping across and a frame counter (so motion is visible), drawn to a canvas and captured.
// Red, green, blue, near-black: no colour is close to another one's inverse.
export const QUADRANTS = ["#dc1e1e", "#1ec81e", "#1e3cdc", "#181818"]; // TL, TR, BL, BR

export function startTestPattern(width, height, fps = 30) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  let frame = 0;
  const draw = () => {
    const w2 = width / 2, h2 = height / 2;
    QUADRANTS.forEach((colour, i) => {
      ctx.fillStyle = colour;
      ctx.fillRect((i % 2) * w2, Math.floor(i / 2) * h2, w2, h2);
    });
    const x = (frame * 4) % width;
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(x, h2 - height / 16, width / 24, height / 8);
    ctx.fillStyle = "#000000";
    ctx.fillRect(w2 - 60, 8, 120, 28);
    ctx.fillStyle = "#ffffff";
    ctx.font = "20px monospace";
    ctx.textAlign = "center";
    ctx.fillText(String(frame).padStart(6, "0"), w2, 29);
    frame += 1;
  };
  draw();
  const timer = setInterval(draw, 1000 / fps);
  const stream = canvas.captureStream(fps);
  return {
    stream,
    stop() {
      clearInterval(timer);
      stream.getTracks().forEach((t) => t.stop());
    },
  };
}
