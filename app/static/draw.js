// Draw or upload tab: a 28x28 pad (drawn with pointer events: mouse, touch or pen) whose PNG is
// sent for reconstruction (VAE), completion of the occluded bottom (PixelCNN) and likelihood.

import { ReadableError, call } from "./api.js";
import { figure, pngImages } from "./ui.js";

function setUpPad(canvas) {
  const pad = canvas.getContext("2d", { willReadFrequently: true });
  const clear = () => { pad.fillStyle = "#000"; pad.fillRect(0, 0, canvas.width, canvas.height); };
  clear();
  let last = null;

  // Pointer position in pad pixels (the canvas is shown scaled up).
  const at = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * (canvas.width / box.width),
            (event.clientY - box.top) * (canvas.height / box.height)];
  };
  const stroke = (to) => {
    pad.strokeStyle = "#fff";
    pad.lineCap = pad.lineJoin = "round";
    pad.lineWidth = Number(document.getElementById("brush").value);
    pad.beginPath();
    pad.moveTo(...(last || to));
    pad.lineTo(...to);
    pad.stroke();
    last = to;
  };
  canvas.addEventListener("pointerdown", (event) => {
    if (event.button > 0) return; // the main button, a finger or a pen tip
    canvas.setPointerCapture(event.pointerId);
    last = null;
    stroke(at(event));
    event.preventDefault();
  });
  canvas.addEventListener("pointermove", (event) => { if (last) stroke(at(event)); });
  for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, () => { last = null; });

  const mapPixels = (f) => {
    const image = pad.getImageData(0, 0, canvas.width, canvas.height);
    const px = image.data;
    for (let i = 0; i < px.length; i += 4) {
      px[i] = px[i + 1] = px[i + 2] = f(px[i], px[i + 1], px[i + 2]);
      px[i + 3] = 255;
    }
    pad.putImageData(image, 0, 0);
  };

  return {
    clear,
    invert: () => mapPixels((r) => 255 - r),
    // An upload is fitted into the square (on black), then made gray like the training images.
    async load(file) {
      let bitmap;
      try {
        bitmap = await createImageBitmap(file);
      } catch {
        throw new ReadableError(`${file.name} is not an image this browser can read`);
      }
      const scale = Math.min(canvas.width / bitmap.width, canvas.height / bitmap.height);
      const w = bitmap.width * scale, h = bitmap.height * scale;
      clear();
      pad.drawImage(bitmap, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
      mapPixels((r, g, b) => Math.round(0.299 * r + 0.587 * g + 0.114 * b));
    },
    png: () => canvas.toDataURL("image/png").split(",")[1],
  };
}

export function drawTab(panel, ctx, run) {
  const form = panel.querySelector("form");
  const pad = setUpPad(panel.querySelector("#pad"));
  const keepRows = panel.querySelector("#keep-rows");
  const padWrap = panel.querySelector(".pad-wrap");
  const sections = {
    likelihood: panel.querySelector("#likelihood-result"),
    reconstruct: panel.querySelector("#reconstruct-result"),
    complete: panel.querySelector("#complete-result"),
  };

  const showKeepLine = () => padWrap.style.setProperty("--keep", keepRows.value);
  keepRows.addEventListener("input", showKeepLine);
  showKeepLine();

  panel.querySelector("#pad-clear").addEventListener("click", pad.clear);
  panel.querySelector("#pad-invert").addEventListener("click", pad.invert);
  const upload = panel.querySelector("#pad-upload");
  upload.addEventListener("change", () => {
    const [file] = upload.files;
    if (file) run(() => pad.load(file));
    upload.value = ""; // choosing the same file again still loads it
  });

  async function showStrip(section, images, captions, altPrefix, signal) {
    const imgs = await pngImages(images, (i) => `${altPrefix}: ${captions(i)}`, signal);
    section.querySelector(".strip").replaceChildren(...imgs.map((img, i) => figure(img, captions(i))));
    section.hidden = false;
  }

  const actions = {
    async reconstruct(signal) {
      const answer = await call(ctx.model.name, "reconstruct", { image: pad.png() }, { signal });
      await showStrip(sections.reconstruct, answer.images, (i) => (i === 0 ? "input" : "reconstruction"),
        ctx.model.name, signal);
    },
    async likelihood(signal) {
      const answer = await call(ctx.model.name, "likelihood", { image: pad.png() }, { signal, image: false });
      const bound = !answer.exact;
      sections.likelihood.querySelector("#bits-per-dim").textContent =
        `${bound ? "≤ " : ""}${answer.bits_per_dim.toFixed(3)}`;
      sections.likelihood.querySelector("#likelihood-note").textContent =
        `${answer.nll_nats.toFixed(1)} nats for the whole image; ` +
        (bound ? "an upper bound (the ELBO)." : "exact.") +
        " Lower means the model finds the image more typical.";
      sections.likelihood.hidden = false;
    },
    async complete(signal) {
      const data = Object.fromEntries(new FormData(form));
      const body = { image: pad.png(), keep_rows: Number(data.keep_rows), n: Number(data.n),
                     seed: Number(data.seed), temperature: Number(data.temperature) };
      const answer = await call(ctx.model.name, "complete", body, { signal });
      const caption = (i) => (i === 0 ? `top ${body.keep_rows} rows` : `seed ${body.seed + i - 1}`);
      await showStrip(sections.complete, answer.images, caption, `${ctx.model.name} completion`, signal);
      return data;
    },
  };

  panel.querySelector("#do-reconstruct").addEventListener("click", () => run(actions.reconstruct));
  panel.querySelector("#do-likelihood").addEventListener("click", () => run(actions.likelihood));

  const reset = () => Object.values(sections).forEach((section) => { section.hidden = true; });

  return { form, run: actions.complete, reset };
}
