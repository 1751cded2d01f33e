// The dashboard: fetches the API (serving/api.py) and draws it. No framework, no build.
// Every number shown is the API's; charts are plain SVG built here.
"use strict";

const FIELDS = [  // [label, view-row key] shown for the selected customer
  ["as of", "as_of"], ["segment", "segment_name"],
  ["churn probability", "churn_probability"], ["expected value", "expected_value"],
  ["value at risk", "value_at_risk"], ["at risk (rule)", "at_risk"],
  ["recency (days)", "recency_days"], ["tenure (days)", "tenure_days"],
  ["purchase days", "frequency"], ["events", "n_events"], ["monetary", "monetary"],
  ["first purchase", "first_purchase_date"], ["last purchase", "last_purchase_date"],
  ["events 30 d", "n_events_30d"], ["spend 30 d", "spend_30d"],
  ["mean days between", "mean_days_between"], ["days overdue", "days_overdue"],
  ["models (segments / churn / recs)", "versions"],
];
const state = { clock: null, customer: null, versions: null };
const $ = (id) => document.getElementById(id);

// Numbers as `pulse view` prints them: 4 decimals below 1, else 2 with separators.
function fmt(v) {
  if (v === null || v === undefined) return "-";
  if (typeof v === "number") {
    if (Number.isInteger(v)) return v.toLocaleString("en-US");
    return Math.abs(v) < 1 ? v.toFixed(4)
      : v.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }
  if (typeof v === "boolean") return v ? "yes" : "no";
  return String(v);
}

async function api(path) {
  const token = sessionStorage.getItem("pulse-token");
  const res = await fetch(path, token ? { headers: { Authorization: `Bearer ${token}` } } : {});
  if (res.status === 401) { $("token-form").hidden = false; throw new Error("token needed"); }
  const body = await res.json();
  if (!res.ok && path !== "/health") throw new Error(body.detail || res.statusText);
  return body;
}

function svg(tag, attrs, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function cells(tr, values) {
  for (const v of values) tr.insertCell().textContent = fmt(v);
}

// ---- health: every second; the rest follows the clock and the versions ----
async function tick() {
  let h;
  try { h = await api("/health"); } catch (e) { $("state").textContent = e.message; return; }
  $("clock").textContent = h.clock || "-";
  $("events-per-s").textContent = fmt(h.events_per_s === null ? null : Math.round(h.events_per_s));
  $("lag").textContent = h.kafka_lag === null ? "-" : fmt(h.kafka_lag);
  $("lag").title = h.kafka_lag_error || "";
  $("batch").textContent = fmt(h.last_batch);
  $("age").textContent = h.last_write_age_s === null ? "-" : h.last_write_age_s.toFixed(1);
  $("state").textContent = h.ok ? "live" : (h.detail || "stale");
  $("state").className = "state " + (h.ok ? "ok" : "stale");
  const versions = JSON.stringify(h.versions || {});
  if (versions !== state.versions) {
    state.versions = versions;
    loadSegments(); loadModels(); loadAtRisk();
  }
  if (h.clock !== state.clock) {
    state.clock = h.clock;
    if (state.customer) showCustomer(state.customer);
  }
}

// ---- at risk ----
async function loadAtRisk() {
  let body;
  try { body = await api(`/at-risk?n=20&order=${$("order").value}`); } catch (e) { return; }
  const tbody = $("at-risk").tBodies[0];
  tbody.replaceChildren();
  for (const r of body.rows) {
    const tr = tbody.insertRow();
    tr.dataset.customer = r.customer_id;
    cells(tr, [r.customer_id, r.value_at_risk, r.churn_probability, r.expected_value,
               r.recency_days, r.segment_name]);
    tr.onclick = () => showCustomer(r.customer_id);
  }
}

// ---- one customer ----
async function showCustomer(id) {
  state.customer = id;
  let row, hist;
  try {
    const path = `/customers/${encodeURIComponent(id)}`;
    [row, hist] = await Promise.all([api(path), api(`${path}/history`)]);
  } catch (e) {
    $("customer").hidden = true;
    $("customer-error").hidden = false;
    $("customer-error").textContent = e.message;
    return;
  }
  $("customer-error").hidden = true;
  $("customer").hidden = false;
  $("customer").dataset.customer = id;
  $("customer-title").textContent = id;
  const dl = $("customer-fields");
  dl.replaceChildren();
  for (const [label, key] of FIELDS) {
    const value = key === "versions"
      ? [row.segments_model_version, row.churn_model_version, row.recs_model_version]
          .map(fmt).join(" / ")
      : fmt(row[key]);
    dl.append(Object.assign(document.createElement("dt"), { textContent: label }));
    const dd = Object.assign(document.createElement("dd"), { textContent: value });
    dd.dataset.field = key;
    dl.append(dd);
  }
  drawHistory(hist);
  $("recs").replaceChildren(...(row.recommendations || []).map(
    (a) => Object.assign(document.createElement("li"), { textContent: a })));
}

function drawHistory(h) {
  const chart = $("history");
  chart.replaceChildren();
  $("history-days").textContent = h.window_days;
  const end = Date.parse(h.as_of), day = 86400000, w = 600 / h.window_days;
  const top = Math.max(1e-9, ...h.days.map((d) => d.spend));
  for (const d of h.days) {
    const x = (h.window_days - 1 - (end - Date.parse(d.date)) / day) * w;
    const height = 130 * d.spend / top;
    const bar = svg("rect", { x, y: 140 - height, width: Math.max(w - 1, 1), height,
                              fill: d.n_purchases ? "#3f6ad8" : "#bbb" });
    bar.dataset.date = d.date;
    bar.dataset.spend = d.spend;
    bar.append(svg("title", {}, `${d.date}: spend ${fmt(d.spend)}, ${d.n_events} events`));
    chart.append(bar);
  }
  chart.append(svg("text", { x: 2, y: 155 }, `${h.window_days} days ago`),
               svg("text", { x: 598, y: 155, "text-anchor": "end" }, h.as_of),
               svg("text", { x: 2, y: 10 }, `max ${fmt(top)}`));
}

// ---- segments ----
async function loadSegments() {
  let s;
  try { s = await api("/segments"); } catch (e) { return; }
  $("segments-version").textContent = `${s.version}, k = ${s.k}, silhouette ${fmt(s.silhouette)}`;
  const tbody = $("segments").tBodies[0];
  tbody.replaceChildren();
  const chart = $("segment-sizes");
  chart.replaceChildren();
  const most = Math.max(1, ...s.segments.map((g) => g.customers));
  const w = 600 / s.segments.length;
  s.segments.forEach((g, i) => {
    const tr = tbody.insertRow();
    tr.dataset.segment = g.segment_name;
    cells(tr, [g.segment_name, g.customers, g.recency_days, g.frequency, g.monetary]);
    const height = 140 * g.customers / most;
    chart.append(svg("rect", { x: i * w + 4, y: 155 - height, width: w - 8, height,
                               fill: `hsl(${i * 57}, 55%, 55%)` }),
                 svg("text", { x: i * w + 4, y: 170 }, g.segment_name));
  });
  $("previous-version").textContent = s.previous_version || "- (first version)";
  const froms = [...new Set(s.migration.map((m) => m.from))];
  const tos = [...new Set(s.migration.map((m) => m.to))];
  const head = $("migration").tHead;
  head.replaceChildren();
  const hr = head.insertRow();
  cells(hr, ["from \\ to", ...tos]);
  const body = $("migration").tBodies[0];
  body.replaceChildren();
  for (const f of froms) {
    const tr = body.insertRow();
    cells(tr, [f, ...tos.map((t) => {
      const m = s.migration.find((x) => x.from === f && x.to === t);
      return m ? m.customers : 0;
    })]);
  }
}

// ---- models ----
function drawCurves(chart, series, xKey, yKey) {
  chart.replaceChildren(svg("line", { x1: 20, y1: 240, x2: 250, y2: 10, stroke: "#999",
                                      "stroke-dasharray": "3" }));
  Object.entries(series || {}).forEach(([name, pts], i) => {
    const d = pts[xKey].map((x, j) => `${j ? "L" : "M"}${20 + 230 * x},${240 - 230 * pts[yKey][j]}`);
    const path = svg("path", { d: d.join(" "), fill: "none", stroke: `hsl(${i * 90}, 60%, 45%)`,
                               "stroke-width": 2 });
    path.dataset.model = name;
    chart.append(path, svg("text", { x: 30, y: 20 + 12 * i,
                                     fill: `hsl(${i * 90}, 60%, 45%)` }, name));
  });
}

async function loadModels() {
  let m;
  try { m = await api("/models"); } catch (e) { return; }
  const churn = m.churn || {};
  drawCurves($("roc"), churn.roc, "fpr", "tpr");
  drawCurves($("reliability"), churn.reliability, "predicted", "observed");
  const aucs = Object.entries((churn.metrics || {})).map(([n, x]) => `${n} AUC ${fmt(x.auc_roc)}`);
  $("roc-legend").textContent = aucs.join(", ");
  const recs = m.recommendations || {};
  const metrics = recs.metrics || {};
  const base = (metrics.popularity || {})["revenue@12"];
  const tbody = $("recs-metrics").tBodies[0];
  tbody.replaceChildren();
  for (const [name, x] of Object.entries(metrics)) {
    const tr = tbody.insertRow();
    tr.dataset.strategy = name;
    cells(tr, [name === recs.served ? `${name} (served)` : name, x["map@12"],
               base ? `${(x["revenue@12"] / base).toFixed(2)}x` : null]);
  }
  $("versions").textContent = "served: " + Object.entries(m)
    .map(([n, e]) => `${n} ${e.version || "-"}`).join(", ");
}

$("order").onchange = loadAtRisk;
$("lookup").onsubmit = (e) => { e.preventDefault(); showCustomer($("customer-id").value.trim()); };
$("token-form").onsubmit = (e) => {
  e.preventDefault();
  sessionStorage.setItem("pulse-token", $("token").value);
  $("token-form").hidden = true;
  state.versions = null;
  tick();
};
tick();
setInterval(tick, 1000);
setInterval(loadAtRisk, 15000);
