// Sample tab: a grid of n images from one seed; image i is the image of seed + i. A model that
// reports its sampling ("stream": rows, or denoising steps) is read as Server-Sent Events and drawn
// as each row or step arrives.

import { call, streamSamples } from "./api.js";
import { offerDownloads } from "./download.js";
import { gridCells, pngImages } from "./ui.js";

export function sampleTab(panel, ctx) {
  const form = panel.querySelector("form");
  const grid = panel.querySelector("#sample-result");
  const live = panel.querySelector("#sample-live");
  const rowsLabel = panel.querySelector(".rows-drawn");
  const output = panel.querySelector(".output");
  const caption = panel.querySelector(".caption");

  // The images of a streamed request: the grid so far while it comes, then its cells.
  async function streamed(body, signal) {
    const [, height, width] = ctx.model.image_shape;
    const cols = Math.ceil(Math.sqrt(body.n));
    output.dataset.rowsDrawn = "0";
    const done = await streamSamples(ctx.model.name, body, (name, data) => {
      if (name !== "progress") return;
      // {"row": i, "rows": n} for a model drawn row by row, {"step": i, "steps": n} for a denoiser.
      const unit = "row" in data ? "row" : "step";
      const reached = data[unit] + 1, total = data[`${unit}s`];
      live.src = `data:image/png;base64,${data.image}`;
      live.alt = unit === "row" ? `${ctx.model.name} samples, ${reached} of ${total} rows drawn`
        : `${ctx.model.name} samples, denoising step ${reached} of ${total}`;
      live.hidden = false;
      grid.replaceChildren();
      rowsLabel.textContent = `${unit} ${reached} of ${total}`;
      output.dataset.rowsDrawn = String(reached);
    }, { signal });
    return { seed: done.seed, images: await gridCells(done.image, body.n, cols, height, width) };
  }

  async function run(signal) {
    const started = performance.now();
    const data = Object.fromEntries(new FormData(form));
    const body = { n: Number(data.n), seed: data.seed === "" ? null : Number(data.seed) };
    if (data.temperature) body.temperature = Number(data.temperature);
    if (data.class) body.class = data.class;
    if (data.steps) body.steps = Number(data.steps);
    rowsLabel.textContent = "";
    const result = ctx.model.capabilities.includes("stream")
      ? await streamed(body, signal) : await call(ctx.model.name, "samples", body, { signal });
    const ofClass = data.class ? `, class ${data.class}` : "";
    const images = await pngImages(result.images,
      (i) => `${ctx.model.name} sample ${i + 1} of ${body.n}, seed ${result.seed + i}${ofClass}`, signal);
    images.forEach((img, i) => { img.title = `seed ${result.seed + i}`; });
    // The seed the server used goes into the form (unless edited meanwhile) and the URL.
    if (form.elements.seed.value === data.seed) form.elements.seed.value = result.seed;
    grid.style.setProperty("--cols", Math.ceil(Math.sqrt(images.length)));
    live.hidden = true;
    grid.replaceChildren(...images);
    caption.querySelector(".seed").textContent = result.seed;
    caption.querySelector(".caption-extra").textContent =
      (images.length > 1 ? ` (cells use seeds ${result.seed}–${result.seed + images.length - 1})` : "") + ofClass;
    // The wait a user had, request to last row: what the model cards' grid time promises.
    caption.querySelector(".elapsed").textContent = `drawn in ${((performance.now() - started) / 1000).toFixed(2)} s`;
    offerDownloads(caption.querySelector(".downloads"), { model: ctx.model.name, op: "samples",
      body: { ...body, seed: result.seed }, name: `${ctx.model.name}-samples-seed${result.seed}` });
    caption.hidden = false;
    return { ...data, seed: result.seed };
  }

  const reset = () => { grid.replaceChildren(); live.hidden = true; caption.hidden = true; };
  const hasResult = () => !caption.hidden;

  return { form, run, reset, hasResult };
}
