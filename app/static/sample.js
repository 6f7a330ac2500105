// Sample tab: a grid of n images from one seed; image i is the image of seed + i.

import { call } from "./api.js";
import { pngImages } from "./ui.js";

export function sampleTab(panel, ctx) {
  const form = panel.querySelector("form");
  const grid = panel.querySelector("#sample-result");
  const caption = panel.querySelector(".caption");

  async function run(signal) {
    const data = Object.fromEntries(new FormData(form));
    const body = { n: Number(data.n), seed: data.seed === "" ? null : Number(data.seed) };
    if (data.temperature) body.temperature = Number(data.temperature);
    if (data.class) body.class = data.class;
    const result = await call(ctx.model.name, "samples", body, { signal });
    const ofClass = data.class ? `, class ${data.class}` : "";
    const images = await pngImages(result.images,
      (i) => `${ctx.model.name} sample ${i + 1} of ${body.n}, seed ${result.seed + i}${ofClass}`, signal);
    images.forEach((img, i) => { img.title = `seed ${result.seed + i}`; });
    // The seed the server used goes into the form (unless edited meanwhile) and the URL.
    if (form.elements.seed.value === data.seed) form.elements.seed.value = result.seed;
    grid.style.setProperty("--cols", Math.ceil(Math.sqrt(images.length)));
    grid.replaceChildren(...images);
    caption.querySelector(".seed").textContent = result.seed;
    caption.querySelector(".caption-extra").textContent =
      (images.length > 1 ? ` (cells use seeds ${result.seed}–${result.seed + images.length - 1})` : "") + ofClass;
    caption.hidden = false;
    return { ...data, seed: result.seed };
  }

  const reset = () => { grid.replaceChildren(); caption.hidden = true; };
  const hasResult = () => !caption.hidden;

  return { form, run, reset, hasResult };
}
