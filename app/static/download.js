// Download buttons for a result. Each fetches the API's own answer to the request that made the
// result (the same request gives the same bytes: seeds are pinned to those the result used) and
// saves it: the PNG grid, the animated GIF where the endpoint makes one, or the JSON answer.

import { fetchFile } from "./api.js";
import { el } from "./ui.js";

const LABELS = { png: "PNG", gif: "GIF", json: "JSON" };

async function save(request, format, button) {
  button.disabled = true;
  button.parentElement.querySelector(".download-status")?.remove();
  try {
    const blob = await fetchFile(request.model, request.op, request.body, format);
    const link = el("a", { href: URL.createObjectURL(blob), download: `${request.name}.${format}`, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
  } catch (err) {
    const status = el("span", { className: "download-status", textContent: `Download failed: ${err.message}` });
    status.setAttribute("role", "alert");
    button.parentElement.append(status);
  } finally {
    button.disabled = false;
  }
}

// Fill `holder` (a <span class="downloads">) with one button per format for `request`:
// { model, op, body, name }, `name` the file's name without its extension.
export function offerDownloads(holder, request, formats = ["png"]) {
  holder.replaceChildren(...formats.map((format) => {
    const button = el("button", { type: "button", className: "download", textContent: `Download ${LABELS[format]}` });
    button.addEventListener("click", () => save(request, format, button));
    return button;
  }));
}
