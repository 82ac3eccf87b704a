// fast_style API page (/docs): renders this server's /openapi.json as plain HTML.
// No framework, no external resources (the page runs under the same strict CSP as the main page).
"use strict";

const METHODS = ["get", "post", "put", "patch", "delete"];

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function code(text) {
  return el("code", { textContent: text });
}

// ---------------------------------------------------------------------------------------------
// Schemas

function resolve(spec, schema) {
  // Follows a local "#/components/schemas/Name" reference (the only kind FastAPI writes).
  let s = schema || {};
  for (let i = 0; s.$ref && i < 10; i++) {
    s = s.$ref.split("/").slice(1).reduce((o, key) => (o || {})[key], spec) || {};
  }
  return s;
}

function typeOf(spec, schema) {
  const s = resolve(spec, schema);
  const variants = s.anyOf || s.oneOf;
  if (variants) {
    const types = variants.map((v) => typeOf(spec, v)).filter((t) => t !== "null");
    return types.join(" or ") + (types.length < variants.length ? " (optional)" : "");
  }
  if (s.enum) return `one of ${s.enum.join(", ")}`;
  if (s.type === "string" && (s.format === "binary" || s.contentMediaType)) return "file";
  if (s.type === "array") return `list of ${typeOf(spec, s.items)}`;
  return s.type || s.title || "any";
}

function constraints(spec, schema) {
  const s = resolve(spec, schema);
  const parts = [];
  for (const v of s.anyOf || s.oneOf || [s]) {
    const r = resolve(spec, v);
    if (r.minimum !== undefined) parts.push(`≥ ${r.minimum}`);
    if (r.exclusiveMinimum !== undefined) parts.push(`> ${r.exclusiveMinimum}`);
    if (r.maximum !== undefined) parts.push(`≤ ${r.maximum}`);
    if (r.exclusiveMaximum !== undefined) parts.push(`< ${r.exclusiveMaximum}`);
  }
  if (s.default !== undefined && s.default !== null) parts.push(`default ${s.default}`);
  return parts.join(", ");
}

function fieldTable(spec, rows) {
  // rows: [{name, schema, required, where}] → a table of name, type, limits, description.
  const th = (h) => el("th", { textContent: h });
  const head = el("tr", {}, ...["Name", "Type", "Limits", "Description"].map(th));
  const required = () => el("span", { className: "required", textContent: " required" });
  const body = rows.map((r) =>
    el(
      "tr",
      {},
      el("td", {}, code(r.name), r.required ? required() : null),
      el("td", { textContent: typeOf(spec, r.schema) + (r.where ? ` (${r.where})` : "") }),
      el("td", { textContent: constraints(spec, r.schema) }),
      el("td", { textContent: r.description || resolve(spec, r.schema).description || "" }),
    ),
  );
  const table = el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
  return el("div", { className: "table-wrap" }, table);
}

// ---------------------------------------------------------------------------------------------
// Operations

function parameters(spec, op) {
  const rows = (op.parameters || []).map((p) => ({
    name: p.name,
    schema: p.schema,
    required: p.required,
    where: p.in,
    description: p.description,
  }));
  return rows.length ? [el("h3", { textContent: "Parameters" }), fieldTable(spec, rows)] : [];
}

function requestBody(spec, op) {
  const content = (op.requestBody || {}).content || {};
  const out = [];
  for (const [type, media] of Object.entries(content)) {
    const schema = resolve(spec, media.schema);
    const required = new Set(schema.required || []);
    const rows = Object.entries(schema.properties || {}).map(([name, s]) => ({
      name,
      schema: s,
      required: required.has(name),
    }));
    out.push(el("h3", {}, "Request body ", code(type)), fieldTable(spec, rows));
  }
  return out;
}

function responses(op) {
  const items = Object.entries(op.responses || {}).map(([status, r]) => {
    const types = Object.keys(r.content || {});
    const media = types.length ? ` (${types.join(", ")})` : "";
    return el("li", {}, code(status), ` ${r.description || ""}${media}`);
  });
  return items.length ? [el("h3", { textContent: "Responses" }), el("ul", {}, ...items)] : [];
}

function curlExample(spec, path, method, op) {
  // A command line with the required fields, to copy and adapt.
  const url = new URL(path, document.baseURI).href;
  const parts = ["curl"];
  const media = ((op.requestBody || {}).content || {})["multipart/form-data"];
  if (method !== "get" && !media) parts.push(`-X ${method.toUpperCase()}`); // -F implies POST
  if (media) {
    const schema = resolve(spec, media.schema);
    for (const name of schema.required || []) {
      const file = typeOf(spec, schema.properties[name]) === "file";
      parts.push(file ? `-F ${name}=@photo.jpg` : `-F ${name}=...`);
    }
    parts.push("-o result.png");
  }
  parts.push(url);
  return [el("h3", { textContent: "Example" }), el("pre", {}, code(parts.join(" ")))];
}

function operation(spec, path, method, op, id) {
  return el(
    "section",
    { className: "panel op", id },
    el(
      "h2",
      {},
      el("span", { className: `method ${method}`, textContent: method.toUpperCase() }),
      code(path),
    ),
    op.summary ? el("p", { className: "summary", textContent: op.summary }) : null,
    op.description ? el("p", { className: "hint", textContent: op.description }) : null,
    ...parameters(spec, op),
    ...requestBody(spec, op),
    ...responses(op),
    ...curlExample(spec, path, method, op),
  );
}

function render(spec) {
  const info = spec.info || {};
  document.title = `${info.title || "API"} · API`;
  const title = document.getElementById("api-title");
  title.textContent = `${info.title || "API"} ${info.version || ""} API`;
  if (info.description) document.getElementById("api-description").prepend(`${info.description} `);
  const ops = document.getElementById("operations");
  const toc = el("ul");
  let n = 0;
  for (const [path, item] of Object.entries(spec.paths || {})) {
    for (const method of METHODS.filter((m) => item[m])) {
      const id = `op-${n++}`;
      ops.append(operation(spec, path, method, item[method], id));
      toc.append(el("li", {}, el("a", { href: `#${id}` }, `${method.toUpperCase()} ${path}`)));
    }
  }
  const nav = document.getElementById("toc");
  nav.append(el("h2", { textContent: "Operations" }), toc);
  nav.hidden = false;
}

async function main() {
  const status = document.getElementById("docs-status");
  try {
    const res = await fetch("openapi.json");
    if (!res.ok) throw new Error(`openapi.json: HTTP ${res.status}`);
    render(await res.json());
    status.hidden = true;
  } catch (e) {
    status.hidden = true;
    const box = document.getElementById("error");
    box.textContent = `Could not load the API description: ${e.message}`;
    box.hidden = false;
  }
}

main();
