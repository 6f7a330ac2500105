// Interpolate tab: a strip of frames between two latents, and a slider that scrubs through it.

import { call } from "./api.js";
import { offerDownloads } from "./download.js";
import { describeLatent, figure, latentOf, pngImages } from "./ui.js";

export function interpolateTab(panel, ctx) {
  const form = panel.querySelector("form");
  const result = panel.querySelector("#interpolate-result");
  const frame = panel.querySelector("#interpolate-frame");
  const slider = panel.querySelector("#interpolate-slider");
  const position = panel.querySelector("#interpolate-position");
  const strip = panel.querySelector("#interpolate-strip");
  const caption = panel.querySelector(".caption");
  let frames = [];

  function show(index) {
    slider.value = index;
    frame.src = frames[index].src;
    frame.alt = `Frame ${index + 1} of ${frames.length}: ${frames[index].alt}`;
    position.textContent = `${index + 1} / ${frames.length}`;
    slider.setAttribute("aria-valuetext", `frame ${index + 1} of ${frames.length}`);
    strip.querySelectorAll("button").forEach((b, i) => b.setAttribute("aria-current", String(i === index)));
  }

  slider.addEventListener("input", () => show(Number(slider.value)));
  strip.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (button) show([...strip.children].indexOf(button.closest("figure")));
  });

  async function run(signal) {
    const data = Object.fromEntries(new FormData(form));
    const start = latentOf(data, "start");
    const end = latentOf(data, "end");
    const body = { start, end, steps: Number(data.steps), method: data.method };
    const answer = await call(ctx.model.name, "interpolate", body, { signal });
    const last = answer.images.length - 1;
    frames = await pngImages(answer.images, (i) =>
      `${Math.round((100 * i) / last)}% of the way from ${describeLatent(start)} to ${describeLatent(end)}`, signal);
    strip.replaceChildren(...frames.map((img, i) => {
      const button = document.createElement("button");
      button.type = "button";
      button.append(img);
      return figure(button, String(i + 1));
    }));
    slider.max = last;
    result.hidden = false;
    show(0);
    caption.querySelector(".caption-extra").textContent =
      `${body.method} from ${describeLatent(start)} to ${describeLatent(end)} in ${frames.length} steps`;
    offerDownloads(caption.querySelector(".downloads"), { model: ctx.model.name, op: "interpolate", body,
      name: `${ctx.model.name}-interpolate` }, ["png", "gif"]);
    caption.hidden = false;
    return data;
  }

  const reset = () => { result.hidden = caption.hidden = true; };
  const hasResult = () => !result.hidden;

  return { form, run, reset, hasResult };
}
