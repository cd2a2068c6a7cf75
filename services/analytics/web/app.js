// The marketers' page: plain JavaScript over the analytics API (no build step).
"use strict";

const DAY = 86400000;
const state = { tenant: "", key: "", info: null, charts: {} };
const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat("en");
const pct = (x) => (x === null || x === undefined ? "n/a" : (100 * x).toFixed(1) + "%");

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, options = {}) {
  const reply = await fetch(`/v1/${encodeURIComponent(state.tenant)}${path}`, {
    ...options,
    headers: { "X-API-Key": state.key, ...(options.headers || {}) },
  });
  const body = await reply.json().catch(() => ({ error: `HTTP ${reply.status}` }));
  if (!reply.ok) {
    const error = new Error(body.error || `HTTP ${reply.status}`);
    error.status = reply.status;
    error.position = body.position;
    throw error;
  }
  return body;
}

// A date input's day, as the instant at its end (the day included), in epoch ms (UTC).
function endOf(dateText) {
  return Date.parse(dateText + "T00:00:00Z") + DAY - 1;
}

function dateOf(ms) {
  return new Date(ms).toISOString().slice(0, 10);
}

function chart(id) {
  if (!state.charts[id]) state.charts[id] = echarts.init($(id));
  return state.charts[id];
}

function table(id, head, rows) {
  const el = $(id);
  el.replaceChildren();
  const thead = el.createTHead().insertRow();
  for (const h of head) {
    const th = document.createElement("th");
    th.textContent = h;
    thead.appendChild(th);
  }
  const body = el.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    row.forEach((cell, i) => {
      const td = i === 0 ? document.createElement("th") : document.createElement("td");
      td.textContent = typeof cell === "number" ? fmt.format(cell) : cell;
      tr.appendChild(td);
    });
  }
}

const model = () => $("model").value;

async function loadStages() {
  const at = $("at").value;
  const query = at ? `?at=${endOf(at)}` : "";
  const body = await api(`/stages/${model()}/counts${query}`);
  $("stages-when").textContent = at ? `at the end of ${at}` : "now";
  const stages = state.info.models[model()];
  table("stages-table", ["stage", "customers", "share"], [
    ...stages.map((s) => [s, body.counts[s], body.total ? pct(body.counts[s] / body.total) : "n/a"]),
    ["total", body.total, ""],
  ]);
  // the stages as a pyramid: the highest on top, each bar as long as its count
  chart("funnel").setOption({
    tooltip: { trigger: "item", formatter: (p) => `${p.name}: ${fmt.format(p.value)}` },
    grid: { left: 8, right: 90, top: 8, bottom: 8, containLabel: true },
    xAxis: { type: "value", show: false },
    yAxis: { type: "category", data: [...stages].reverse(), axisTick: { show: false } },
    series: [{
      type: "bar", barWidth: "65%", itemStyle: { color: "#3056d3", borderRadius: [0, 4, 4, 0] },
      label: { show: true, position: "right",
               formatter: (p) => `${fmt.format(p.value)}  ${body.total ? pct(p.value / body.total) : ""}` },
      data: [...stages].reverse().map((s) => body.counts[s]),
    }],
  }, true);
}

async function loadFlow() {
  const from = $("from").value, to = $("to").value;
  const body = await api(`/stages/${model()}/flow?from=${endOf(from)}&to=${endOf(to)}`);
  const axis = body.stages;
  const links = [];
  body.matrix.forEach((row, i) => row.forEach((n, j) => {
    // the two ends named apart, so that a flow from a date to the same date stays a DAG
    if (n) links.push({ source: `${axis[i]} (from ${from})`, target: `${axis[j]} (to ${to})`, value: n });
  }));
  // only the stages someone was in at either end
  const named = new Set(links.flatMap((l) => [l.source, l.target]));
  const nodes = [...named].map((name) => ({ name }));
  chart("sankey").setOption({
    tooltip: { trigger: "item" },
    series: [{ type: "sankey", data: nodes, links, emphasis: { focus: "adjacency" }, nodeAlign: "justify",
               lineStyle: { color: "gradient", opacity: 0.4 } }],
  }, true);
  table("flow-matrix", [`${from} \\ ${to}`, ...axis], body.matrix.map((row, i) => [axis[i], ...row]));
  table("flow-rates", ["conversion between layers", "rate"],
    Object.entries(body.adjacent_conversion).map(([k, v]) => [k, pct(v)]));
}

async function loadSeries() {
  const from = $("from").value, to = $("to").value;
  const step = Math.max(1, parseInt($("step").value || "7", 10));
  const body = await api(`/stages/${model()}/series?from=${endOf(from)}&to=${endOf(to)}&step_days=${step}`);
  chart("series").setOption({
    tooltip: { trigger: "axis" },
    legend: { type: "scroll" },
    xAxis: { type: "category", data: body.points.map((p) => p.at.slice(0, 10)) },
    yAxis: { type: "value" },
    series: body.stages.map((s) => ({ name: s, type: "line", stack: "all", areaStyle: {}, showSymbol: false,
                                      data: body.points.map((p) => p.counts[s]) })),
  }, true);
}

// --- audiences ---------------------------------------------------------------------------------
let counting = 0;

// the audience as of the date chosen for the stages (its end), or now
const asOf = () => ($("at").value ? `&at=${endOf($("at").value)}` : "");

async function countAudience() {
  const text = $("expression").value.trim();
  const mine = ++counting;
  const box = $("expression-error");
  $("audience-when").textContent = $("at").value ? `at the end of ${$("at").value}` : "now";
  if (!text) {
    $("audience-count").textContent = "–";
    box.hidden = true;
    return;
  }
  try {
    const body = await api(`/audiences/count?expression=${encodeURIComponent(text)}${asOf()}`);
    if (mine !== counting) return;
    $("audience-count").textContent = fmt.format(body.count);
    box.hidden = true;
  } catch (error) {
    if (mine !== counting) return;
    $("audience-count").textContent = "–";
    const caret = error.position === undefined ? "" : `\n${" ".repeat(error.position)}^`;
    box.textContent = `${error.message}\n${text}${caret}`;
    box.hidden = false;
  }
}

async function loadAudiences() {
  const body = await api("/audiences");
  const rows = [];
  for (const a of body.audiences) {
    const counted = await api(`/audiences/${encodeURIComponent(a.name)}/count`).catch(() => ({ count: "?" }));
    rows.push([a.name, a.expression, counted.count, a.saved_at.slice(0, 16).replace("T", " ")]);
  }
  table("audiences-table", ["saved audience", "expression", "customers now", "saved"],
    rows.length ? rows : [["no saved audience yet", "", "", ""]]);
}

async function saveAudience() {
  const name = $("audience-name").value.trim();
  await api("/audiences", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name, expression: $("expression").value }),
  });
  await loadAudiences();
}

async function exportAudience(format) {
  const text = $("expression").value.trim();
  const reply = await fetch(
    `/v1/${encodeURIComponent(state.tenant)}/audiences/export?format=${format}&expression=${encodeURIComponent(text)}${asOf()}`,
    { headers: { "X-API-Key": state.key } });
  if (!reply.ok) throw new Error((await reply.json()).error);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await reply.blob());
  link.download = `${state.tenant}-audience.${format}`;
  link.click();
  URL.revokeObjectURL(link.href);
}

async function cross() {
  const text = $("expression").value.trim() || `${model()}:${state.info.models[model()][0]}`;
  const rows = $("rows").value, cols = $("cols").value;
  const body = await api(`/audiences/crossing?expression=${encodeURIComponent(text)}&rows=${rows}&cols=${cols}`);
  table("crossing", [`${rows} \\ ${cols}`, ...body.cols.values, "total"],
    body.rows.values.map((v, i) => [v, ...body.cells[i], body.cells[i].reduce((a, b) => a + b, 0)]));
}

// --- campaigns ---------------------------------------------------------------------------------
const money = new Intl.NumberFormat("en", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const points = (x) => (x === null || x === undefined ? "n/a" : (x >= 0 ? "+" : "") + (100 * x).toFixed(2));

async function loadCampaigns() {
  const body = await api("/campaigns/results");
  const which = $("final-only").checked ? "final" : "all";
  const rows = body.campaigns.map((c) => {
    const r = c[which], t = r.treatment, k = r.control;
    const rate = (g) => (g.trials ? pct(g.converted / g.trials) : "n/a");
    let uplift = r.uplift === null ? (t.trials ? "n/a (no control)" : "n/a (none treated)") : points(r.uplift);
    if (r.uplift_ci_low !== null) uplift += ` [${points(r.uplift_ci_low)}, ${points(r.uplift_ci_high)}]`;
    return [c.campaign_id, `${c.window_days}d`, `${fmt.format(t.trials)}/${fmt.format(t.customers)}`, rate(t),
            `${fmt.format(k.trials)}/${fmt.format(k.customers)}`, rate(k), uplift,
            r.incremental_revenue === null ? "n/a" : money.format(r.incremental_revenue), money.format(t.cost),
            r.roi === null ? "n/a" : pct(r.roi), `${fmt.format(r.final_trials)}`];
  });
  table("campaigns", ["campaign", "window", "treated trials/customers", "conv.", "control trials/customers",
                      "conv.", "uplift, points [95% CI]", "incr. revenue", "cost", "ROI", "final trials"],
    rows.length ? rows : [["no campaign yet", "", "", "", "", "", "", "", "", "", ""]]);
  const asOf = body.campaigns.map((c) => c.as_of).sort().pop();
  $("campaigns-as-of").textContent = asOf ? `as of ${asOf.replace("T", " ").slice(0, 16)} UTC (event time)` : "";
}

// --- wiring ------------------------------------------------------------------------------------
function guard(fn) {
  return async (...args) => {
    try {
      showError("");
      await fn(...args);
    } catch (error) {
      showError(error.message);
    }
  };
}

async function open() {
  state.tenant = $("tenant").value.trim();
  state.key = $("key").value;
  sessionStorage.setItem("crm-key", state.key);
  state.info = await api("/info");
  const models = Object.keys(state.info.models);
  $("model").replaceChildren(...models.map((m) => new Option(m, m)));
  const dims = [...state.info.attributes, ...models];
  $("rows").replaceChildren(...dims.map((d) => new Option(d, d)));
  $("cols").replaceChildren(...dims.map((d) => new Option(d, d)));
  $("rows").value = "city";
  $("cols").value = "gender";
  const until = state.info.complete_until || state.info.latest;
  const end = until ? Date.parse(until) : Date.now();
  $("to").value = dateOf(end);
  $("from").value = dateOf(end - 90 * DAY);
  $("clock").textContent = until ? `history complete up to ${until.replace("T", " ").slice(0, 16)} UTC` : "no history yet";
  $("app").hidden = false;
  history.replaceState(null, "", `?tenant=${encodeURIComponent(state.tenant)}`);
  await refresh();
  await loadAudiences();
  await loadCampaigns();
}

async function refresh() {
  await loadStages();
  await loadFlow();
  await loadSeries();
}

function debounce(fn, ms) {
  let timer;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

document.addEventListener("DOMContentLoaded", () => {
  const params = new URLSearchParams(location.search);
  const fragment = new URLSearchParams(location.hash.slice(1));
  $("tenant").value = params.get("tenant") || "";
  $("key").value = fragment.get("key") || sessionStorage.getItem("crm-key") || "";
  if (fragment.get("key")) history.replaceState(null, "", location.pathname + location.search);
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    guard(open)();
  });
  $("model").addEventListener("change", guard(refresh));
  $("at").addEventListener("change", guard(async () => {
    await loadStages();
    await countAudience();
  }));
  $("now").addEventListener("click", guard(async () => {
    $("at").value = "";
    await loadStages();
    await countAudience();
  }));
  $("flow-go").addEventListener("click", guard(async () => {
    await loadFlow();
    await loadSeries();
  }));
  $("series-go").addEventListener("click", guard(loadSeries));
  $("expression").addEventListener("input", debounce(countAudience, 250));
  $("audience-save").addEventListener("click", guard(saveAudience));
  $("export-csv").addEventListener("click", guard(() => exportAudience("csv")));
  $("export-ndjson").addEventListener("click", guard(() => exportAudience("ndjson")));
  $("crossing-go").addEventListener("click", guard(cross));
  $("final-only").addEventListener("change", guard(loadCampaigns));
  window.addEventListener("resize", () => Object.values(state.charts).forEach((c) => c.resize()));
  if ($("tenant").value && $("key").value) guard(open)();
});
