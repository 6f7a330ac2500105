// Draw or upload tab: a pad of the model's size (drawn with pointer events: mouse, touch or pen)
// whose PNG is sent for reconstruction (VAE), completion of the occluded bottom (PixelCNN) and
// likelihood. A grayscale model's pad is light on black (dark on white for a model whose training
// images stand on white); a colour model's takes any ink and paper, the paper first its ground.

import { ReadableError, call } from "./api.js";
import { offerDownloads } from "./download.js";
import { figure, pngImages } from "./ui.js";

// The brush widths are pixels of a 28-pixel pad; a bigger pad gets proportionally wider strokes,
// so that a stroke covers as much of the picture whatever the model's size.
const BRUSH_REFERENCE_SIDE = 28;

const luma = (r, g, b) => Math.round(0.299 * r + 0.587 * g + 0.114 * b);

function setUpPad(canvas, colours) {
  const pad = canvas.getContext("2d", { willReadFrequently: true });
  let inColour = false;
  let ground = "#000000"; // what the model's training images stand on (its `background`)
  const opposite = (colour) => (colour === "#000000" ? "#ffffff" : "#000000");
  const ink = () => (inColour ? colours.ink.value : opposite(ground));
  const paper = () => (inColour ? colours.paper.value : ground);
  const clear = () => { pad.fillStyle = paper(); pad.fillRect(0, 0, canvas.width, canvas.height); };
  clear();
  let last = null;

  // Pointer position in pad pixels (the canvas is shown scaled up).
  const at = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * (canvas.width / box.width),
            (event.clientY - box.top) * (canvas.height / box.height)];
  };
  const stroke = (to) => {
    pad.strokeStyle = ink();
    pad.lineCap = pad.lineJoin = "round";
    pad.lineWidth = Number(document.getElementById("brush").value)
      * (Math.min(canvas.width, canvas.height) / BRUSH_REFERENCE_SIDE);
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

  // `f(r, g, b)` -> [r, g, b] for every pixel, made opaque.
  const mapPixels = (f) => {
    const image = pad.getImageData(0, 0, canvas.width, canvas.height);
    const px = image.data;
    for (let i = 0; i < px.length; i += 4) {
      [px[i], px[i + 1], px[i + 2]] = f(px[i], px[i + 1], px[i + 2]);
      px[i + 3] = 255;
    }
    pad.putImageData(image, 0, 0);
  };
  const toGray = () => mapPixels((r, g, b) => Array(3).fill(luma(r, g, b)));

  return {
    clear,
    invert: () => mapPixels((r, g, b) => [255 - r, 255 - g, 255 - b]),
    // Another model's shape: the drawing so far is scaled to its size, and made gray for a
    // grayscale model, so that the pad shows what is sent. A model on another ground starts a
    // fresh pad of that ground, the colour pickers set to it and its opposite.
    fit([channels, height, width], background) {
      inColour = channels > 1;
      const newGround = background === "white" ? "#ffffff" : "#000000";
      if (newGround !== ground) {
        ground = newGround;
        [colours.paper.value, colours.ink.value] = [ground, opposite(ground)];
        [canvas.width, canvas.height] = [width, height];
        clear();
      }
      if (canvas.width !== width || canvas.height !== height) {
        const before = document.createElement("canvas");
        [before.width, before.height] = [canvas.width, canvas.height];
        before.getContext("2d").drawImage(canvas, 0, 0);
        [canvas.width, canvas.height] = [width, height]; // which also empties the pad
        pad.drawImage(before, 0, 0, width, height);
      }
      if (!inColour) toGray();
    },
    // An upload is fitted into the pad on the paper (its transparent parts show the paper); for a
    // grayscale model it is then made gray like the training images, a colour model keeps it.
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
      if (!inColour) toGray();
    },
    png: () => canvas.toDataURL("image/png").split(",")[1],
  };
}

export function drawTab(panel, ctx, run) {
  const form = panel.querySelector("form");
  const canvas = panel.querySelector("#pad");
  const colours = panel.querySelector("#pad-colours");
  const pad = setUpPad(canvas, { ink: panel.querySelector("#ink"), paper: panel.querySelector("#paper") });
  const hint = panel.querySelector("#pad-hint");
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

  // A result's section, and its download: the API's answer to `request` (op, body) as a file.
  function shown(section, request, format = "png") {
    offerDownloads(section.querySelector(".downloads"),
      { model: ctx.model.name, name: `${ctx.model.name}-${request.op}`, ...request }, [format]);
    section.hidden = false;
  }

  async function showStrip(section, images, captions, altPrefix, signal) {
    const imgs = await pngImages(images, (i) => `${altPrefix}: ${captions(i)}`, signal);
    section.querySelector(".strip").replaceChildren(...imgs.map((img, i) => figure(img, captions(i))));
  }

  const actions = {
    async reconstruct(signal) {
      const body = { image: pad.png() };
      const answer = await call(ctx.model.name, "reconstruct", body, { signal });
      await showStrip(sections.reconstruct, answer.images, (i) => (i === 0 ? "input" : "reconstruction"),
        ctx.model.name, signal);
      shown(sections.reconstruct, { op: "reconstruct", body });
    },
    async likelihood(signal) {
      const body = { image: pad.png() };
      const answer = await call(ctx.model.name, "likelihood", body, { signal, image: false });
      const bound = !answer.exact;
      sections.likelihood.querySelector("#bits-per-dim").textContent =
        `${bound ? "≤ " : ""}${answer.bits_per_dim.toFixed(3)}`;
      sections.likelihood.querySelector("#likelihood-note").textContent =
        `${answer.nll_nats.toFixed(1)} nats for the whole image; ` +
        (bound ? "an upper bound (the ELBO)." : "exact.") +
        " Lower means the model finds the image more typical.";
      shown(sections.likelihood, { op: "likelihood", body }, "json");
    },
    async complete(signal) {
      const data = Object.fromEntries(new FormData(form));
      const body = { image: pad.png(), keep_rows: Number(data.keep_rows), n: Number(data.n),
                     seed: Number(data.seed), temperature: Number(data.temperature) };
      const answer = await call(ctx.model.name, "complete", body, { signal });
      const caption = (i) => (i === 0 ? `top ${body.keep_rows} rows` : `seed ${body.seed + i - 1}`);
      await showStrip(sections.complete, answer.images, caption, `${ctx.model.name} completion`, signal);
      shown(sections.complete, { op: "complete", body });
      return data;
    },
  };

  panel.querySelector("#do-reconstruct").addEventListener("click", () => run(actions.reconstruct));
  panel.querySelector("#do-likelihood").addEventListener("click", () => run(actions.likelihood));

  // The pad, its labels and the rows that a completion may keep follow the model's image shape.
  function followModel() {
    const [channels, height, width] = ctx.model.image_shape;
    const inColour = channels > 1;
    pad.fit(ctx.model.image_shape, ctx.model.background);
    const onWhite = ctx.model.background === "white";
    canvas.setAttribute("aria-label", `Drawing pad, ${width} by ${height} pixels${inColour ? ", in colour" : ""}: `
      + "draw with a mouse, finger or pen");
    hint.textContent = inColour
      ? `Any ink on any paper; Clear fills the pad with the paper. An upload keeps its colour, is scaled to fit `
        + `${width}×${height} on the paper and can be drawn over.`
      : `${onWhite ? "Dark strokes on white" : "Light strokes on black"}, like the training images. `
        + `An upload is turned gray, scaled to fit ${width}×${height} `
        + "and can be drawn over.";
    colours.hidden = !inColour;
    colours.querySelectorAll("input").forEach((input) => { input.disabled = !inColour; });
    padWrap.style.setProperty("--rows", height);
    if (Number(keepRows.max) !== height - 1) {
      keepRows.max = height - 1;
      keepRows.value = Math.floor(height / 2);
      keepRows.dispatchEvent(new Event("input", { bubbles: true })); // its shown value and line follow
    }
  }

  // A new model: earlier results no longer apply, and the pad takes its shape.
  const reset = () => {
    Object.values(sections).forEach((section) => { section.hidden = true; });
    followModel();
  };

  return { form, run: actions.complete, reset };
}
