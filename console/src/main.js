// Quarry's web console: a SQL editor over the HTTP query API (docs/JOBS.md),
// a virtualized result grid, an explorer of schemas and tables, the job
// history and the cluster. Everything it reads comes from the node that
// serves it; it fetches nothing from elsewhere.

import { EditorView, keymap } from "@codemirror/view";
import { EditorState, Compartment } from "@codemirror/state";
import { defaultKeymap, history, historyKeymap } from "@codemirror/commands";
import { sql, PostgreSQL } from "@codemirror/lang-sql";
import { autocompletion, completionKeymap } from "@codemirror/autocomplete";
import { syntaxHighlighting, defaultHighlightStyle, bracketMatching } from "@codemirror/language";
import { lineNumbers, highlightActiveLine } from "@codemirror/view";
import { Grid } from "./grid.js";
import { renderPlan } from "./plan.js";

// ---------------------------------------------------------------- API

let authorization = null;

/** A call of the node's HTTP API; a 401 asks for a login and retries. */
async function call(method, path, body, accept) {
  const headers = { "Content-Type": "application/json" };
  if (accept) headers.Accept = accept;
  if (authorization) headers.Authorization = authorization;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    const refusal = await response.json().catch(() => ({}));
    await logIn(refusal.error ? refusal.error.message : "Log in");
    return call(method, path, body, accept);
  }
  return response;
}

function logIn(why) {
  const dialog = document.getElementById("login");
  document.getElementById("login-why").textContent = why;
  return new Promise((resolve) => {
    const form = document.getElementById("login-form");
    form.onsubmit = () => {
      const data = new FormData(form);
      authorization = "Basic " + btoa(`${data.get("user")}:${data.get("password")}`);
      document.getElementById("whoami").textContent = data.get("user");
      resolve();
    };
    dialog.showModal();
  });
}

/** Runs `text` and waits for its end: the job with its first page. */
async function query(text, maxRows = 1000) {
  let response = await call("POST", "/v1/queries", { sql: text, timeout_ms: 60000, max_rows: maxRows });
  let job = await response.json();
  while (response.status === 202) {
    await sleep(200);
    response = await call("GET", `/v1/jobs/${job.job_id}/results?max_rows=${maxRows}`);
    job = await response.json();
  }
  if (job.error && job.state === "DONE" && !job.rows) throw job.error;
  if (!response.ok) throw job.error || { message: `HTTP ${response.status}` };
  return job;
}

/** The rows of `text` as objects by column name. */
async function rows(text) {
  const job = await query(text, 100000);
  const names = (job.schema || []).map((c) => c.name);
  return (job.rows || []).map((r) => Object.fromEntries(names.map((n, i) => [n, r[i]])));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const literal = (s) => "'" + String(s).replace(/'/g, "''") + "'";
const ident = (s) => '"' + String(s).replace(/"/g, '""') + '"';

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function bytes(n) {
  n = Number(n || 0);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

/** A table of `records` with `columns` (name or [name, render]). */
function dataTable(records, columns, onClick) {
  const cols = columns.map((c) => (Array.isArray(c) ? c : [c, (r) => r[c]]));
  return el("table", { class: "data" },
    el("thead", {}, el("tr", {}, cols.map(([name]) => el("th", { scope: "col" }, name)))),
    el("tbody", {}, records.map((r) => {
      const row = el("tr", onClick ? { class: "clickable", tabindex: "0" } : {},
        cols.map(([, render]) => {
          const v = render(r);
          return el("td", {}, v instanceof Node ? v : v === null || v === undefined ? "" : String(v));
        }));
      if (onClick) {
        row.addEventListener("click", () => onClick(r));
        row.addEventListener("keydown", (e) => { if (e.key === "Enter") onClick(r); });
      }
      return row;
    })));
}

// ---------------------------------------------------------------- pages

const pages = ["query", "explorer", "history", "cluster"];
let clusterTimer = null;

function show(page) {
  if (!pages.includes(page)) page = "query";
  for (const p of pages) {
    document.getElementById(`page-${p}`).hidden = p !== page;
    const link = document.querySelector(`nav a[data-page="${p}"]`);
    if (p === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  clearInterval(clusterTimer);
  if (page === "explorer") loadTree();
  if (page === "history") loadHistory();
  if (page === "cluster") { loadCluster(); clusterTimer = setInterval(loadCluster, 2000); }
}

window.addEventListener("hashchange", () => show(location.hash.slice(1)));

// ---------------------------------------------------------------- query

const completion = new Compartment();
const editor = new EditorView({
  parent: document.getElementById("editor"),
  state: EditorState.create({
    doc: "SELECT * FROM quarry_system.tables;",
    extensions: [
      lineNumbers(),
      highlightActiveLine(),
      history(),
      bracketMatching(),
      syntaxHighlighting(defaultHighlightStyle),
      completion.of(sql({ dialect: PostgreSQL })),
      autocompletion(),
      keymap.of([
        { key: "Mod-Enter", run: () => { run(); return true; } },
        ...completionKeymap,
        ...defaultKeymap,
        ...historyKeymap,
      ]),
      EditorView.contentAttributes.of({ "aria-label": "SQL" }),
    ],
  }),
});

/** Completion of the schemas, tables and columns the role can read. */
async function loadCompletion() {
  try {
    const columns = await rows(
      "SELECT table_schema, table_name, column_name FROM information_schema.columns " +
      "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, ordinal_position");
    const schema = {};
    for (const c of columns) {
      const key = `${c.table_schema}.${c.table_name}`;
      (schema[key] = schema[key] || []).push(c.column_name);
    }
    editor.dispatch({
      effects: completion.reconfigure(sql({ dialect: PostgreSQL, schema, defaultSchema: "public" })),
    });
  } catch (_) { /* completion without names */ }
}

const grid = new Grid(document.getElementById("grid"), fetchPage);
let current = null;

async function fetchPage(jobId, from, count) {
  const response = await call("GET", `/v1/jobs/${jobId}/results?page_token=${from}&max_rows=${count}`);
  const page = await response.json();
  return page.rows || [];
}

function statsLine(job) {
  const s = job.statistics || {};
  const parts = [
    ["state", job.state],
    ["elapsed", s.elapsed_ms === null || s.elapsed_ms === undefined ? "" : `${s.elapsed_ms} ms`],
    ["bytes processed", bytes(s.total_bytes_processed)],
    ["rows", s.row_count],
    ["slot time", `${s.total_slot_ms || 0} ms`],
    ["peak memory", bytes(s.peak_memory_bytes)],
    ["spilled", bytes(s.spilled_bytes)],
    ["cache hit", s.cache_hit ? "yes" : "no"],
  ];
  return [el("span", {}, `job ${job.job_id}: `),
    ...parts.map(([k, v]) => el("span", {}, `${k} `, el("b", {}, String(v)), "  "))];
}

/** The statement to run: the selection, else the whole text. */
function statementText() {
  const { from, to } = editor.state.selection.main;
  const text = from === to ? editor.state.doc.toString() : editor.state.sliceDoc(from, to);
  return text.trim().replace(/;\s*$/, "");
}

async function run() {
  const text = statementText();
  if (!text || current) return;
  const status = document.getElementById("status");
  const stats = document.getElementById("stats");
  const plan = document.getElementById("plan");
  const runButton = document.getElementById("run");
  const cancelButton = document.getElementById("cancel");
  runButton.disabled = true;
  cancelButton.disabled = false;
  status.textContent = "running";
  plan.hidden = true;
  stats.replaceChildren();
  grid.clear();
  const started = performance.now();
  const ticker = setInterval(() => {
    status.textContent = `running ${((performance.now() - started) / 1000).toFixed(1)} s`;
  }, 100);
  try {
    let response = await call("POST", "/v1/queries", { sql: text, timeout_ms: 500, max_rows: 200 });
    let job = await response.json();
    current = job.job_id;
    while (response.status === 202) {
      stats.replaceChildren(...statsLine(job));
      await sleep(300);
      response = await call("GET", `/v1/jobs/${job.job_id}/results?max_rows=200`);
      job = await response.json();
    }
    stats.replaceChildren(...statsLine(job));
    if (job.error) {
      status.replaceChildren(el("span", { class: "error" }, `${job.error.code}: ${job.error.message}`));
      return;
    }
    status.textContent = `done in ${((performance.now() - started) / 1000).toFixed(2)} s`;
    const columns = (job.schema || []).map((c) => c.name);
    if (columns.length === 2 && columns[0] === "plan_type" && columns[1] === "plan") {
      plan.hidden = false;
      renderPlan(plan, job.rows || []);
    }
    grid.show(job.job_id, job.schema || [], job.total_rows || 0, job.rows || []);
    document.getElementById("download-csv").disabled = !job.schema;
    document.getElementById("download-json").disabled = !job.schema;
  } catch (e) {
    status.replaceChildren(el("span", { class: "error" }, e.message || String(e)));
  } finally {
    clearInterval(ticker);
    current = null;
    runButton.disabled = false;
    cancelButton.disabled = true;
  }
}

async function cancel() {
  if (current) await call("DELETE", `/v1/jobs/${current}`);
}

/** Every row of the shown result, page by page. */
async function allRows() {
  const all = [];
  for (let from = 0; from < grid.total; from += 100000) {
    all.push(...await fetchPage(grid.jobId, from, 100000));
  }
  return all;
}

function download(name, type, text) {
  const link = el("a", { href: URL.createObjectURL(new Blob([text], { type })), download: name });
  document.body.append(link);
  link.click();
  link.remove();
}

document.getElementById("run").addEventListener("click", run);
document.getElementById("cancel").addEventListener("click", cancel);
document.getElementById("download-csv").addEventListener("click", async () => {
  const quote = (v) => (v === null ? "" : /[",\n]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v);
  const lines = [grid.columns.map((c) => quote(c.name)).join(",")];
  for (const r of await allRows()) lines.push(r.map(quote).join(","));
  download(`${grid.jobId}.csv`, "text/csv", lines.join("\n") + "\n");
});
document.getElementById("download-json").addEventListener("click", async () => {
  const names = grid.columns.map((c) => c.name);
  const records = (await allRows()).map((r) => Object.fromEntries(names.map((n, i) => [n, r[i]])));
  download(`${grid.jobId}.json`, "application/json", JSON.stringify(records, null, 1));
});

function runInEditor(text) {
  editor.dispatch({ changes: { from: 0, to: editor.state.doc.length, insert: text } });
  location.hash = "#query";
  run();
}

// ---------------------------------------------------------------- explorer

async function loadTree() {
  const tree = document.getElementById("tree");
  try {
    const tables = await rows(
      "SELECT table_schema, table_name, table_type FROM information_schema.tables " +
      "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2");
    const bySchema = new Map();
    for (const t of tables) {
      if (!bySchema.has(t.table_schema)) bySchema.set(t.table_schema, []);
      bySchema.get(t.table_schema).push(t);
    }
    tree.replaceChildren(...[...bySchema].map(([schema, list]) => el("div", { role: "group" },
      el("div", { class: "schema", role: "treeitem" }, schema),
      list.map((t) => el("button", {
        type: "button", class: "table", role: "treeitem",
        onclick: () => showTable(t.table_schema, t.table_name),
      }, t.table_name)))));
  } catch (e) {
    tree.replaceChildren(el("p", { class: "error" }, e.message));
  }
}

async function showTable(schema, name) {
  const detail = document.getElementById("table-detail");
  detail.replaceChildren(el("p", {}, "loading…"));
  const qualified = `${ident(schema)}.${ident(name)}`;
  const [columns, sizes, snapshots, preview] = await Promise.all([
    rows(`SELECT column_name, data_type, is_nullable FROM information_schema.columns ` +
      `WHERE table_schema = ${literal(schema)} AND table_name = ${literal(name)} ORDER BY ordinal_position`),
    rows(`SELECT row_count, size_bytes, buffered_bytes, data_files FROM quarry_system.tables ` +
      `WHERE table_schema = ${literal(schema)} AND table_name = ${literal(name)}`).catch(() => []),
    rows(`SELECT * FROM quarry_system.snapshots WHERE table_schema = ${literal(schema)} ` +
      `AND table_name = ${literal(name)} ORDER BY committed_at DESC LIMIT 50`).catch(() => []),
    query(`SELECT * FROM ${qualified} LIMIT 20`, 20).catch((e) => ({ error: e })),
  ]);
  const size = sizes[0];
  detail.replaceChildren(
    el("h2", {}, `${schema}.${name}`),
    size ? el("p", {}, `${size.row_count} rows · ${bytes(Number(size.size_bytes) + Number(size.buffered_bytes))} · ${size.data_files} data files`) : null,
    el("h3", {}, "Columns"),
    dataTable(columns, ["column_name", "data_type", "is_nullable"]),
    el("h3", {}, "Preview"),
    preview.error ? el("p", { class: "error" }, preview.error.message)
      : dataTable((preview.rows || []).map((r) => r),
        (preview.schema || []).map((c, i) => [c.name, (r) => r[i]])),
    el("h3", {}, "Snapshots"),
    snapshots.length ? dataTable(snapshots, [
      ["snapshot", (s) => s.snapshot_id],
      ["committed", (s) => s.committed_at],
      ["operation", (s) => s.operation],
      ["rows", (s) => s.row_count],
      ["", (s) => el("button", {
        type: "button",
        onclick: () => runInEditor(`SELECT * FROM ${qualified} FOR SYSTEM_TIME AS OF ${literal(s.committed_at)} LIMIT 1000`),
      }, "Query as of")],
    ]) : el("p", { class: "muted" }, "no snapshots"),
  );
}

// ---------------------------------------------------------------- history

async function loadHistory() {
  const form = document.getElementById("history-filters");
  const data = new FormData(form);
  const where = [`creation_time > now() - INTERVAL ${literal(data.get("since"))}`];
  if (data.get("user")) where.push(`user_name = ${literal(data.get("user"))}`);
  if (data.get("state") === "FAILED") where.push("error_sqlstate IS NOT NULL");
  else if (data.get("state")) where.push(`state = ${literal(data.get("state"))}`);
  if (data.get("text")) where.push(`query ILIKE ${literal("%" + data.get("text") + "%")}`);
  const target = document.getElementById("history");
  try {
    const jobs = await rows(
      "SELECT job_id, creation_time, user_name, state, statement_type, total_bytes_processed, " +
      "row_count, total_slot_ms, error_sqlstate, query FROM quarry_system.jobs WHERE " +
      where.join(" AND ") + " ORDER BY creation_time DESC LIMIT 500");
    target.replaceChildren(dataTable(jobs, [
      ["created", (j) => j.creation_time],
      ["user", (j) => j.user_name],
      ["state", (j) => el("span", { class: j.error_sqlstate ? "failed" : `state-${j.state}` }, j.error_sqlstate ? `${j.state} ${j.error_sqlstate}` : j.state)],
      ["type", (j) => j.statement_type],
      ["bytes", (j) => bytes(j.total_bytes_processed)],
      ["rows", (j) => j.row_count],
      ["slot ms", (j) => j.total_slot_ms],
      ["query", (j) => (j.query.length > 120 ? j.query.slice(0, 120) + "…" : j.query)],
    ], showJob));
  } catch (e) {
    target.replaceChildren(el("p", { class: "error" }, e.message));
  }
}

async function showJob(row) {
  const response = await call("GET", `/v1/jobs/${row.job_id}`);
  const job = await response.json();
  const detail = document.getElementById("job-detail");
  const s = job.statistics || {};
  detail.replaceChildren(
    el("h2", {}, `Job ${job.job_id}`),
    el("pre", {}, job.query),
    dataTable([
      ["node", job.node_id], ["user", job.user_name], ["client", job.client],
      ["type", job.statement_type], ["state", job.state],
      ["created", job.creation_time], ["started", job.start_time], ["ended", job.end_time],
      ["elapsed", `${s.elapsed_ms} ms`], ["bytes processed", bytes(s.total_bytes_processed)],
      ["rows", s.row_count], ["slot time", `${s.total_slot_ms} ms`],
      ["peak memory", bytes(s.peak_memory_bytes)], ["spilled", bytes(s.spilled_bytes)],
      ["cache hit", s.cache_hit ? "yes" : "no"],
      ["tables read", (s.referenced_tables || []).join(", ")],
      ["table written", s.destination_table],
      ["error", job.error ? `${job.error.code}: ${job.error.message}` : ""],
    ].map(([k, v]) => ({ k, v })), [["", (r) => r.k], ["", (r) => r.v]]),
    el("button", { type: "button", onclick: () => runInEditor(job.query) }, "Open in editor"),
  );
}

document.getElementById("history-filters").addEventListener("submit", (e) => {
  e.preventDefault();
  loadHistory();
});

// ---------------------------------------------------------------- cluster

const series = new Map();
const CHARTED = [
  ["quarry_query_memory_reserved_bytes", "query memory (bytes)"],
  ["quarry_statements_waiting_for_slot", "statements waiting for a slot"],
  ["quarry_fragments_running", "fragments running"],
  ["quarry_jobs_total", "jobs (total)"],
];

/** Each metric of Prometheus' text format, summed over its labels. */
function parseMetrics(text) {
  const values = new Map();
  for (const line of text.split("\n")) {
    const match = line.match(/^([a-z_]+)(\{[^}]*\})?\s+([-0-9.eE+]+)/);
    if (match) values.set(match[1], (values.get(match[1]) || 0) + Number(match[3]));
  }
  return values;
}

function sparkline(points) {
  const max = Math.max(1, ...points);
  const step = 300 / Math.max(1, points.length - 1);
  const path = points.map((p, i) => `${i ? "L" : "M"}${(i * step).toFixed(1)},${(78 - (p / max) * 74).toFixed(1)}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 300 80");
  svg.setAttribute("role", "img");
  svg.innerHTML = `<path d="${path}" fill="none" stroke="#2459d1" stroke-width="2"/>`;
  return svg;
}

async function loadCluster() {
  try {
    const [nodes, stripes] = await Promise.all([
      rows("SELECT node_id, rpc_address, pg_address, state, raft_role, chunks, chunk_bytes FROM quarry_system.nodes ORDER BY node_id"),
      rows("SELECT health, count(*) AS stripes FROM quarry_system.stripes GROUP BY health"),
    ]);
    document.getElementById("nodes").replaceChildren(dataTable(nodes, [
      ["node", (n) => n.node_id],
      ["state", (n) => el("span", { class: `state-${n.state}` }, n.state)],
      ["raft role", (n) => n.raft_role],
      ["address", (n) => n.rpc_address],
      ["PostgreSQL", (n) => n.pg_address],
      ["chunks held", (n) => n.chunks],
      ["bytes held", (n) => bytes(n.chunk_bytes)],
    ]));
    const health = Object.fromEntries(stripes.map((s) => [s.health, s.stripes]));
    const metricsText = await (await call("GET", "/metrics")).text();
    const metrics = parseMetrics(metricsText);
    const card = (label, value) => el("div", { class: "card" }, el("div", { class: "value" }, String(value)), el("div", {}, label));
    document.getElementById("stripes").replaceChildren(
      card("stripes healthy", health.healthy || 0),
      card("stripes degraded", health.degraded || 0),
      card("stripes lost", health.lost || 0),
      card("chunks repaired", metrics.get("quarry_storage_chunks_repaired_total") || 0),
      card("statements waiting for a slot", metrics.get("quarry_statements_waiting_for_slot") || 0),
    );
    for (const [name] of CHARTED) {
      const list = series.get(name) || [];
      list.push(metrics.get(name) || 0);
      if (list.length > 60) list.shift();
      series.set(name, list);
    }
    document.getElementById("charts").replaceChildren(...CHARTED.map(([name, label]) =>
      el("div", { class: "chart" }, el("div", {}, `${label}: ${(series.get(name) || []).at(-1)}`), sparkline(series.get(name) || []))));
  } catch (e) {
    document.getElementById("nodes").replaceChildren(el("p", { class: "error" }, e.message || String(e)));
  }
}

// ---------------------------------------------------------------- start

show(location.hash.slice(1) || "query");
loadCompletion();
window.quarryConsole = { editor, grid, run };
