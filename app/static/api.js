// The REST API, as the page uses it. Every image request asks for ?format=json, so the page gets
// the individual images (to scrub, label and give alt text) plus the seed the server used.

// An error whose message is written for the person using the page.
export class ReadableError extends Error {}

// FastAPI errors are {"detail": "text"} or, for validation (422), a list of {loc, msg}.
function describe(status, statusText, body) {
  const detail = body && body.detail;
  let text;
  if (Array.isArray(detail)) {
    text = detail.map((d) => {
      const where = (d.loc || []).filter((part) => part !== "body").join(".");
      return where ? `${where}: ${d.msg}` : d.msg;
    }).join("\n");
  } else if (typeof detail === "string") {
    text = detail;
  } else if (detail) {
    text = JSON.stringify(detail);
  }
  return `${text || statusText || "Request failed"} (HTTP ${status})`;
}

async function request(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ReadableError("Could not reach the service. Is it still running?");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ReadableError(describe(response.status, response.statusText, body));
  if (body === null) throw new ReadableError(`The service sent an unreadable answer (HTTP ${response.status})`);
  return { body, headers: response.headers };
}

export async function listModels() {
  return (await request("/v1/models")).body;
}

// POST /v1/models/{model}/{op}; image ops get ?format=json. The seed comes from the body, or the
// X-Seed header where the body has none.
export async function call(model, op, payload, { signal, image = true } = {}) {
  const query = image ? "?format=json" : "";
  const { body, headers } = await request(`/v1/models/${encodeURIComponent(model)}/${op}${query}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(payload),
    signal,
  });
  if (image && !(Array.isArray(body.images) && body.images.length)) {
    throw new ReadableError("The service answered without images");
  }
  const seed = body.seed ?? headers.get("X-Seed");
  return { ...body, seed: seed === null || seed === undefined ? null : Number(seed) };
}

// The API's own answer to a request, as a file's contents: `format` "png" (an image endpoint's
// plain answer), "gif" (?format=gif) or "json" (a JSON endpoint's answer).
export async function fetchFile(model, op, payload, format) {
  const query = format === "gif" ? "?format=gif" : "";
  let response;
  try {
    response = await fetch(`/v1/models/${encodeURIComponent(model)}/${op}${query}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    });
  } catch {
    throw new ReadableError("Could not reach the service. Is it still running?");
  }
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw new ReadableError(describe(response.status, response.statusText, body));
  }
  return response.blob();
}

export async function getJson(path, { signal } = {}) {
  return (await request(path, { signal })).body;
}

// One Server-Sent Event block ("event: NAME\ndata: JSON") -> [name, data].
function parseEvent(block) {
  const fields = {};
  for (const line of block.split("\n")) {
    const colon = line.indexOf(": ");
    if (colon > 0) fields[line.slice(0, colon)] = line.slice(colon + 2);
  }
  return [fields.event, JSON.parse(fields.data)];
}

// POST .../samples with Accept: text/event-stream. `onEvent(name, data)` sees each event as it
// arrives; resolves with the `done` event's data and the seed. Aborting the signal closes the
// connection, which stops the sampling on the server.
export async function streamSamples(model, payload, onEvent, { signal } = {}) {
  let response;
  try {
    response = await fetch(`/v1/models/${encodeURIComponent(model)}/samples`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(payload),
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ReadableError("Could not reach the service. Is it still running?");
  }
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw new ReadableError(describe(response.status, response.statusText, body));
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let done = null;
  for (;;) {
    const { value, done: ended } = await reader.read();
    if (ended) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const [name, data] = parseEvent(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
      if (name === "error") throw new ReadableError(data.detail);
      if (name === "done") done = data;
      onEvent(name, data);
    }
  }
  if (!done) throw new ReadableError("The stream ended before the samples were done");
  return { ...done, seed: Number(response.headers.get("X-Seed")) };
}
