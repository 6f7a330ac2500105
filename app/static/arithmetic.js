// Arithmetic tab: decode A - B + C and show it as an equation of pictures, as in the DCGAN paper.

import { call } from "./api.js";
import { offerDownloads } from "./download.js";
import { describeLatent, el, figure, latentOf, pngImages } from "./ui.js";

const TERMS = [["a", 1], ["b", -1], ["c", 1]];

export function arithmeticTab(panel, ctx) {
  const form = panel.querySelector("form");
  const result = panel.querySelector("#arithmetic-result");
  const equation = panel.querySelector("#arithmetic-equation");
  const variations = panel.querySelector("#arithmetic-variations");
  const variationsTitle = panel.querySelector("#arithmetic-variations-title");
  const caption = panel.querySelector(".caption");

  function op(symbol, label) {
    const span = el("span", { className: "op", textContent: symbol });
    span.setAttribute("role", "img"); // so that screen readers say "minus", not a dash
    span.setAttribute("aria-label", label);
    return span;
  }

  async function run(signal) {
    const data = Object.fromEntries(new FormData(form));
    const specs = TERMS.map(([name]) => latentOf(data, name));
    const body = {
      terms: specs.map((latent, i) => ({ latent, weight: TERMS[i][1] })),
      n: Number(data.n),
      noise: Number(data.noise),
      seed: data.seed === "" ? null : Number(data.seed),
      show_terms: true,
    };
    const answer = await call(ctx.model.name, "arithmetic", body, { signal });
    const formula = `${describeLatent(specs[0])} − ${describeLatent(specs[1])} + ${describeLatent(specs[2])}`;
    // The operands come first, then the result, then its noisy variations (when n > 1).
    const images = await pngImages(answer.images, (i) =>
      i < specs.length ? `Operand ${"ABC"[i]}: ${describeLatent(specs[i])}`
        : i === specs.length ? `Result: ${formula}` : `Variation ${i - specs.length} of ${formula}`, signal);
    const [a, b, c, sum, ...rest] = images;
    const answerFigure = figure(sum, "result");
    answerFigure.className = "answer";
    equation.replaceChildren(
      figure(a, `A: ${describeLatent(specs[0])}`), op("−", "minus"),
      figure(b, `B: ${describeLatent(specs[1])}`), op("+", "plus"),
      figure(c, `C: ${describeLatent(specs[2])}`), op("=", "equals"), answerFigure);
    variations.replaceChildren(...rest.map((img, i) => figure(img, `#${i + 1}`)));
    variationsTitle.hidden = variations.hidden = rest.length === 0;
    if (answer.seed !== null && form.elements.seed.value === data.seed) form.elements.seed.value = answer.seed;
    result.hidden = false;
    caption.querySelector(".caption-extra").textContent =
      `${formula}${answer.seed !== null ? `, noise seed ${answer.seed}` : ""}`;
    offerDownloads(caption.querySelector(".downloads"), { model: ctx.model.name, op: "arithmetic",
      body: { ...body, seed: answer.seed ?? body.seed }, name: `${ctx.model.name}-arithmetic` });
    caption.hidden = false;
    return { ...data, seed: answer.seed ?? data.seed };
  }

  const reset = () => { result.hidden = caption.hidden = true; };
  const hasResult = () => !result.hidden;

  return { form, run, reset, hasResult };
}
