#!/usr/bin/env node
// Writes the Grafana dashboard uniattn-serve.json (beside this file) that deploy/base provisions through a
// ConfigMap labelled grafana_dashboard. Edit this, then: node deploy/base/dashboards/generate.mjs
// (tests/deploy fails when the JSON and this generator disagree, and checks every query against a live
// server's /metrics).
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const SEL = 'namespace=~"$namespace", model_name=~"$model_name"';
const RATE = "$__rate_interval";
const DS = { type: "prometheus", uid: "${datasource}" };

let nextId = 1;
let y = 0;

function target(expr, legendFormat, refId) {
  return { datasource: DS, expr, legendFormat, range: true, refId };
}

function quantiles(metric, by = "") {
  const group = by ? `le, ${by}` : "le";
  return [0.5, 0.9, 0.99].map((q, i) =>
    target(
      `histogram_quantile(${q}, sum by (${group}) (rate(${metric}_bucket{${SEL}}[${RATE}])))`,
      `p${Math.round(q * 100)}${by ? ` {{${by}}}` : ""}`,
      String.fromCharCode(65 + i),
    ),
  );
}

function timeseries(title, description, targets, { unit = "short", w = 12, h = 8, x = 0, min, max, thresholds } = {}) {
  const panel = {
    id: nextId++,
    type: "timeseries",
    title,
    description,
    datasource: DS,
    gridPos: { h, w, x, y },
    fieldConfig: {
      defaults: {
        unit,
        custom: { drawStyle: "line", lineWidth: 1, fillOpacity: 10, showPoints: "never", spanNulls: true },
        ...(min !== undefined ? { min } : {}),
        ...(max !== undefined ? { max } : {}),
        ...(thresholds
          ? { thresholds: { mode: "absolute", steps: thresholds }, custom: { drawStyle: "line", lineWidth: 1, fillOpacity: 10, showPoints: "never", spanNulls: true, thresholdsStyle: { mode: "line+area" } } }
          : {}),
      },
      overrides: [],
    },
    options: {
      legend: { displayMode: "table", placement: "bottom", showLegend: true, calcs: ["mean", "max", "lastNotNull"] },
      tooltip: { mode: "multi", sort: "desc" },
    },
    targets,
  };
  return panel;
}

function stat(title, description, expr, { unit = "short", w = 4, x = 0, decimals, thresholds } = {}) {
  return {
    id: nextId++,
    type: "stat",
    title,
    description,
    datasource: DS,
    gridPos: { h: 4, w, x, y },
    fieldConfig: {
      defaults: {
        unit,
        ...(decimals !== undefined ? { decimals } : {}),
        thresholds: { mode: "absolute", steps: thresholds ?? [{ color: "green", value: null }] },
      },
      overrides: [],
    },
    options: {
      reduceOptions: { calcs: ["lastNotNull"], fields: "", values: false },
      colorMode: "value",
      graphMode: "area",
      justifyMode: "auto",
      orientation: "auto",
      textMode: "auto",
    },
    targets: [target(expr, title, "A")],
  };
}

function row(title) {
  const r = { id: nextId++, type: "row", title, collapsed: false, gridPos: { h: 1, w: 24, x: 0, y }, panels: [] };
  y += 1;
  return r;
}

const panels = [];
const add = (...ps) => {
  panels.push(...ps);
  y += Math.max(...ps.map((p) => p.gridPos.h));
};

// ---- Overview ----
panels.push(row("Overview"));
add(
  stat("Replicas", "Pods exporting uniattn metrics.", `count(uniattn:num_requests_running{${SEL}})`, { x: 0 }),
  stat("Running requests", "Requests in the running batches, all replicas.", `sum(uniattn:num_requests_running{${SEL}})`, { x: 4 }),
  stat(
    "Waiting requests per replica",
    "The autoscaling signal: KEDA adds replicas while this stays above 5 (deploy/base/scaledobject.yaml).",
    `sum(uniattn:num_requests_waiting{${SEL}}) / count(uniattn:num_requests_waiting{${SEL}})`,
    { x: 8, decimals: 1, thresholds: [{ color: "green", value: null }, { color: "orange", value: 5 }] },
  ),
  stat("Generated tokens/s", "Output tokens per second, all replicas.", `sum(rate(uniattn:generation_tokens_total{${SEL}}[${RATE}]))`, { x: 12, unit: "short" }),
  stat(
    "KV cache usage",
    "Fraction of KV blocks in use, fullest replica.",
    `max(uniattn:kv_cache_usage_perc{${SEL}})`,
    { x: 16, unit: "percentunit", thresholds: [{ color: "green", value: null }, { color: "orange", value: 0.8 }, { color: "red", value: 0.95 }] },
  ),
  stat(
    "KV bytes saved by UniAttn",
    "1 - kv_bytes_per_token / kv_bytes_per_token_dense: the share of a dense model's KV cache that UniAttn's reuse layers do not store.",
    `1 - sum(uniattn:kv_bytes_per_token{${SEL}}) / sum(uniattn:kv_bytes_per_token_dense{${SEL}})`,
    { x: 20, unit: "percentunit", decimals: 1 },
  ),
);

// ---- Latency ----
panels.push(row("Latency"));
add(
  timeseries("Time to first token", "TTFT percentiles over all replicas.", quantiles("uniattn:time_to_first_token_seconds"), { unit: "s", x: 0 }),
  timeseries("Inter-token latency", "Time between consecutive output tokens of a request (TPOT/ITL).", quantiles("uniattn:inter_token_latency_seconds"), { unit: "s", x: 12 }),
);
add(
  timeseries("End-to-end request latency", "From arrival to the last token.", quantiles("uniattn:e2e_request_latency_seconds"), { unit: "s", x: 0, w: 8 }),
  timeseries("Queue time", "From arrival to first scheduled: grows when replicas are short.", quantiles("uniattn:request_queue_time_seconds"), { unit: "s", x: 8, w: 8 }),
  timeseries(
    "Prefill and decode time (p90)",
    "Per request: first scheduled to first token (prefill), first token to finish (decode).",
    [
      target(`histogram_quantile(0.9, sum by (le) (rate(uniattn:request_prefill_time_seconds_bucket{${SEL}}[${RATE}])))`, "prefill p90", "A"),
      target(`histogram_quantile(0.9, sum by (le) (rate(uniattn:request_decode_time_seconds_bucket{${SEL}}[${RATE}])))`, "decode p90", "B"),
    ],
    { unit: "s", x: 16, w: 8 },
  ),
);

// ---- Throughput ----
panels.push(row("Throughput"));
add(
  timeseries(
    "Tokens per second",
    "Prompt (prefill) and generated (decode) tokens per second, all replicas.",
    [
      target(`sum(rate(uniattn:generation_tokens_total{${SEL}}[${RATE}]))`, "generated", "A"),
      target(`sum(rate(uniattn:prompt_tokens_total{${SEL}}[${RATE}]))`, "prompt", "B"),
    ],
    { x: 0, w: 8 },
  ),
  timeseries(
    "Finished requests per second",
    "By finish reason: stop, length, abort.",
    [target(`sum by (finished_reason) (rate(uniattn:request_success_total{${SEL}}[${RATE}]))`, "{{finished_reason}}", "A")],
    { unit: "reqps", x: 8, w: 8 },
  ),
  timeseries(
    "Generated tokens per second by pod",
    "Balance across replicas.",
    [target(`sum by (pod) (rate(uniattn:generation_tokens_total{${SEL}}[${RATE}]))`, "{{pod}}", "A")],
    { x: 16, w: 8 },
  ),
);

// ---- Scheduler and KV cache ----
panels.push(row("Scheduler and KV cache"));
add(
  timeseries(
    "Running and waiting requests",
    "All replicas. Waiting per replica above 5 scales out.",
    [
      target(`sum(uniattn:num_requests_running{${SEL}})`, "running", "A"),
      target(`sum(uniattn:num_requests_waiting{${SEL}})`, "waiting", "B"),
    ],
    { x: 0, w: 8 },
  ),
  timeseries(
    "Waiting requests by pod",
    "Requests queued on each replica; the autoscaler's threshold is 5 per replica on average.",
    [target(`sum by (pod) (uniattn:num_requests_waiting{${SEL}})`, "{{pod}}", "A")],
    { x: 8, w: 8, thresholds: [{ color: "transparent", value: null }, { color: "orange", value: 5 }] },
  ),
  timeseries(
    "KV cache usage by pod",
    "Fraction of KV blocks in use; near 1 means preemptions.",
    [target(`max by (pod) (uniattn:kv_cache_usage_perc{${SEL}})`, "{{pod}}", "A")],
    { unit: "percentunit", x: 16, w: 8, min: 0, max: 1 },
  ),
);
add(
  timeseries(
    "Preemptions per second",
    "Running requests evicted for lack of KV blocks (recomputed later).",
    [target(`sum(rate(uniattn:num_preemptions_total{${SEL}}[${RATE}]))`, "preemptions", "A")],
    { x: 0, w: 8 },
  ),
  timeseries(
    "Prefix-cache hit rate",
    "Prompt tokens served from cached KV blocks / prompt tokens looked up.",
    [target(`sum(rate(uniattn:prefix_cache_hits_total{${SEL}}[${RATE}])) / sum(rate(uniattn:prefix_cache_queries_total{${SEL}}[${RATE}]))`, "hit rate", "A")],
    { unit: "percentunit", x: 8, w: 8, min: 0, max: 1 },
  ),
  timeseries(
    "Engine step time by phase (p90)",
    "Schedule, forward and sample time per engine step.",
    [target(`histogram_quantile(0.9, sum by (le, phase) (rate(uniattn:step_duration_seconds_bucket{${SEL}}[${RATE}])))`, "{{phase}}", "A")],
    { unit: "s", x: 16, w: 8 },
  ),
);

// ---- UniAttn ----
panels.push(row("UniAttn KV savings"));
add(
  timeseries(
    "KV bytes saved by UniAttn",
    "1 - kv_bytes_per_token / kv_bytes_per_token_dense, by pod: reuse layers keep no K plane.",
    [target(`1 - sum by (pod) (uniattn:kv_bytes_per_token{${SEL}}) / sum by (pod) (uniattn:kv_bytes_per_token_dense{${SEL}})`, "{{pod}}", "A")],
    { unit: "percentunit", x: 0, w: 8, min: 0, max: 1 },
  ),
  timeseries(
    "KV bytes per token",
    "With this model's UniAttn layout, and for the same shape with every layer keeping K and V.",
    [
      target(`max(uniattn:kv_bytes_per_token{${SEL}})`, "UniAttn", "A"),
      target(`max(uniattn:kv_bytes_per_token_dense{${SEL}})`, "dense", "B"),
    ],
    { unit: "bytes", x: 8, w: 8 },
  ),
  timeseries(
    "KV cache bytes in use",
    "Bytes held by running sequences, by pod, and what a dense layout would hold for the same tokens.",
    [
      target(`sum by (pod) (uniattn:kv_cache_bytes{${SEL}})`, "{{pod}}", "A"),
      target(
        `sum(uniattn:kv_cache_bytes{${SEL}}) * sum(uniattn:kv_bytes_per_token_dense{${SEL}}) / sum(uniattn:kv_bytes_per_token{${SEL}})`,
        "dense equivalent (all pods)",
        "B",
      ),
    ],
    { unit: "bytes", x: 16, w: 8 },
  ),
);

const variable = (name, label, query) => ({
  name,
  label,
  type: "query",
  datasource: DS,
  query: { query, refId: `${name}-var` },
  refresh: 2,
  includeAll: true,
  multi: true,
  allValue: ".*",
  current: { selected: true, text: ["All"], value: ["$__all"] },
  options: [],
  sort: 1,
  hide: 0,
});

const dashboard = {
  uid: "uniattn-serve",
  title: "UniAttn Serve",
  description: "uniattn-serve: latency, throughput, scheduler, KV cache and UniAttn's KV savings (metrics uniattn:*).",
  tags: ["uniattn", "llm", "serving"],
  timezone: "browser",
  editable: true,
  graphTooltip: 1,
  schemaVersion: 39,
  version: 1,
  refresh: "30s",
  time: { from: "now-1h", to: "now" },
  timepicker: {},
  fiscalYearStartMonth: 0,
  liveNow: false,
  links: [],
  annotations: { list: [] },
  templating: {
    list: [
      {
        name: "datasource",
        label: "Data source",
        type: "datasource",
        query: "prometheus",
        options: [],
        refresh: 1,
        hide: 0,
        includeAll: false,
        multi: false,
      },
      variable("namespace", "Namespace", "label_values(uniattn:num_requests_running, namespace)"),
      variable("model_name", "Model", 'label_values(uniattn:num_requests_running{namespace=~"$namespace"}, model_name)'),
    ],
  },
  panels,
};

const out = join(dirname(fileURLToPath(import.meta.url)), "uniattn-serve.json");
const text = JSON.stringify(dashboard, null, 2) + "\n";
if (process.argv[2] === "--stdout") process.stdout.write(text);
else writeFileSync(out, text);
