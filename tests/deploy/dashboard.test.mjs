// The Grafana dashboard: in sync with its generator, valid against Grafana's own schema types
// (@grafana/schema, strict field check), every query valid PromQL (Prometheus' grammar), a sane layout,
// and the panels the issue asks for. live.test.mjs checks the queries against a real server.
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { ROOT, readText, typeCheck, dashboardQueries, grafanaToPromql, promqlRefs } from "./lib.mjs";

const text = readText("deploy/base/dashboards/uniattn-serve.json");
const dashboard = JSON.parse(text);
// Type-checks a dashboard against @grafana/schema's Dashboard (string enums take their values, as in JSON).
const schemaProblems = (d) =>
  typeCheck([{ label: "dashboard", pkg: "@grafana/schema", iface: "Dashboard", value: d, jsonEnums: true }]);

const panels = (d) => d.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
const exprs = () => dashboardQueries(dashboard).map((q) => q.expr);

// Layout problems: duplicate ids, panels outside the 24-column grid, overlapping panels.
export function layoutProblems(d) {
  const problems = [];
  const ids = new Set();
  const cells = new Map();
  for (const p of panels(d)) {
    if (ids.has(p.id)) problems.push(`duplicate panel id ${p.id}`);
    ids.add(p.id);
    const { x, y, w, h } = p.gridPos;
    if (x < 0 || w < 1 || x + w > 24) problems.push(`"${p.title}" is outside the grid (x ${x}, w ${w})`);
    for (let i = x; i < x + w; i++) {
      for (let j = y; j < y + h; j++) {
        const k = `${i},${j}`;
        if (cells.has(k)) problems.push(`"${p.title}" overlaps "${cells.get(k)}"`);
        cells.set(k, p.title);
      }
    }
  }
  return [...new Set(problems)];
}

describe("Grafana dashboard", () => {
  test("matches its generator (node deploy/base/dashboards/generate.mjs)", () => {
    const generated = execFileSync(process.execPath, [join(ROOT, "deploy/base/dashboards/generate.mjs"), "--stdout"], { encoding: "utf8" });
    assert.equal(text, generated, "uniattn-serve.json is stale: run node deploy/base/dashboards/generate.mjs");
  });

  test("conforms to Grafana's dashboard schema types (@grafana/schema), unknown fields included", () => {
    const errors = schemaProblems(dashboard);
    assert.deepEqual(errors, [], errors.join("\n"));
  });

  test("the schema check catches a misspelled field and a bad enum value", () => {
    // (TypeScript reports the first problem of an array; one mutation per check.)
    const bad = structuredClone(dashboard);
    bad.panels[1].gridpos = bad.panels[1].gridPos;
    const errors = schemaProblems(bad);
    assert.equal(errors.length, 1, errors.join("\n"));
    assert.match(errors[0], /'"gridpos"' does not exist/);
    const bad2 = structuredClone(dashboard);
    bad2.panels[1].fieldConfig.defaults.thresholds.mode = "absolut";
    const errors2 = schemaProblems(bad2);
    assert.equal(errors2.length, 1, errors2.join("\n"));
    assert.match(errors2[0], /"absolut"/);
  });

  test("every query is valid PromQL and names uniattn: metrics only", () => {
    const problems = [];
    for (const { where, expr } of dashboardQueries(dashboard)) {
      const { metrics, errors } = promqlRefs(grafanaToPromql(expr));
      for (const e of errors) problems.push(`${where}: ${e}`);
      for (const m of metrics) if (!m.startsWith("uniattn:")) problems.push(`${where}: ${m} is not a uniattn metric`);
    }
    assert.deepEqual(problems, [], problems.join("\n"));
    assert.ok(promqlRefs("sum(rate(x[5m])").errors.length > 0, "the parser reports syntax errors");
  });

  test("layout: unique ids, inside the grid, no overlaps; every query uses the datasource variable", () => {
    assert.deepEqual(layoutProblems(dashboard), []);
    const broken = structuredClone(dashboard);
    broken.panels[2].gridPos = { ...broken.panels[1].gridPos };
    assert.ok(layoutProblems(broken).some((p) => p.includes("overlaps")), "the layout check catches an overlap");
    for (const p of panels(dashboard)) {
      if (p.type === "row") continue;
      assert.ok(p.title && p.description, `panel ${p.id} needs a title and a description`);
      for (const t of p.targets) assert.equal(t.datasource.uid, "${datasource}", `"${p.title}" ${t.refId}`);
    }
    assert.equal(dashboard.uid, "uniattn-serve");
    assert.deepEqual(dashboard.templating.list.map((v) => v.name), ["datasource", "namespace", "model_name"]);
  });

  test("has the panels the deployment needs", () => {
    const all = exprs().join("\n");
    const has = (re, what) => assert.ok(re.test(all), `no panel for ${what}`);
    for (const q of ["0.5", "0.9", "0.99"]) {
      has(new RegExp(`histogram_quantile\\(${q}, sum by \\(le\\) \\(rate\\(uniattn:time_to_first_token_seconds_bucket`), `TTFT p${q}`);
      has(new RegExp(`histogram_quantile\\(${q}, sum by \\(le\\) \\(rate\\(uniattn:inter_token_latency_seconds_bucket`), `ITL p${q}`);
    }
    has(/sum\(rate\(uniattn:generation_tokens_total\{/, "throughput");
    has(/uniattn:num_requests_running\{/, "running requests");
    has(/uniattn:num_requests_waiting\{/, "waiting requests");
    has(/uniattn:kv_cache_usage_perc\{/, "KV cache usage");
    has(/1 - sum(?: by \(pod\))? \(uniattn:kv_bytes_per_token\{[^}]*\}\) \/ sum(?: by \(pod\))? \(uniattn:kv_bytes_per_token_dense\{/, "KV bytes saved by UniAttn");
    has(/rate\(uniattn:num_preemptions_total\{/, "preemptions");
    has(/sum\(rate\(uniattn:prefix_cache_hits_total\{[^}]*\}\[\$__rate_interval\]\)\) \/ sum\(rate\(uniattn:prefix_cache_queries_total\{/, "prefix-cache hit rate");
  });
});
