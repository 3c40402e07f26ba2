// The real uniattn-serve, started with the cpu overlay's config (ports 0, the repository's default model):
// the probe paths answer as the Deployment expects, every metric and label that the Grafana dashboard and
// the KEDA autoscaler query is exported after traffic, every query evaluates to data in a real Prometheus
// scraping the server, and SIGTERM drains and exits 0 within the pod's grace period.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import YAML from "yaml";
import {
  readText, kustomize, serverBinary, find, serverContainer, renderedConfig, startServer, stopServer, defaultModelDir,
  dashboardQueries, grafanaToPromql, promqlRefs, parseExposition, TARGET_LABELS,
} from "./lib.mjs";

const dashboard = JSON.parse(readText("deploy/base/dashboards/uniattn-serve.json"));
const overlay = kustomize("deploy/overlays/cpu");
const scaledObject = find(overlay, "ScaledObject");

// Every query the dashboard and the autoscaler run.
function allQueries() {
  const qs = dashboardQueries(dashboard);
  for (const t of scaledObject.spec.triggers) qs.push({ where: `ScaledObject trigger ${t.type}`, expr: t.metadata.query });
  return qs;
}

// Problems with `queries` against an exposition (Map from parseExposition): metrics not exported, label
// names no exported series of that metric carries (target labels that Prometheus adds are allowed).
export function missingFromExposition(queries, exposed) {
  const problems = [];
  for (const { where, expr } of queries) {
    const { metrics, labels, errors } = promqlRefs(grafanaToPromql(expr));
    for (const e of errors) problems.push(`${where}: ${e}`);
    if (metrics.size === 0) problems.push(`${where}: no metric in ${expr}`);
    const carried = new Set(TARGET_LABELS);
    for (const m of metrics) {
      const s = exposed.get(m);
      if (!s) {
        problems.push(`${where}: ${m} is not exported`);
        continue;
      }
      for (const l of s.labels) carried.add(l);
    }
    for (const l of labels) if (!carried.has(l)) problems.push(`${where}: label ${l} is on none of ${[...metrics].join(", ")}`);
  }
  return problems;
}

async function post(base, path, body) {
  const r = await fetch(`${base}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  const text = await r.text();
  assert.equal(r.status, 200, `${path}: ${r.status} ${text}`);
  return text;
}

async function traffic(base) {
  const prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends.";
  await post(base, "/v1/completions", { model: "stories15M", prompt, max_tokens: 8 });
  // The same prompt again: its full KV blocks come from the prefix cache.
  await post(base, "/v1/completions", { model: "stories15M", prompt, max_tokens: 8 });
  const sse = await post(base, "/v1/completions", { model: "stories15M", prompt: "The cat", max_tokens: 12, stream: true });
  assert.match(sse, /data: \[DONE\]/);
  await post(base, "/v1/chat/completions", { model: "stories15M", messages: [{ role: "user", content: "Tell me a story." }], max_tokens: 6 });
}

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on("error", rej);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

describe("the real server with the cpu overlay's config", () => {
  let srv;
  let base;
  let exposition;
  const deployment = find(overlay, "Deployment");
  const container = serverContainer(deployment);
  const { config } = renderedConfig(overlay);

  before(async () => {
    const model = defaultModelDir();
    const cfg = join(mkdtempSync(join(tmpdir(), "uniattn-deploy-")), "config.yaml");
    // The ConfigMap's config.yaml as the pod would get it, with this machine's model path and loopback.
    writeFileSync(cfg, find(overlay, "ConfigMap", renderedConfig(overlay).name).data["config.yaml"]);
    srv = await startServer(["--config", cfg, "--set", `model.path=${model}`, "--host", "127.0.0.1", "--port", "0", "--grpc-port", "0"]);
    base = `http://127.0.0.1:${srv.port}`;
  });

  after(async () => {
    await stopServer(srv, "SIGKILL");
  });

  test("the probe paths answer 200 once ready, and an unknown path does not", async () => {
    for (const probe of ["startupProbe", "livenessProbe", "readinessProbe"]) {
      const r = await fetch(`${base}${container[probe].httpGet.path}`);
      assert.equal(r.status, 200, `${probe} ${container[probe].httpGet.path}`);
    }
    assert.equal((await fetch(`${base}/healthz-not-a-route`)).status, 404);
  });

  test("every metric and label the dashboard and the autoscaler query is exported after traffic", async () => {
    await traffic(base);
    const r = await fetch(`${base}/metrics`);
    assert.equal(r.status, 200);
    exposition = parseExposition(await r.text());
    const queries = allQueries();
    assert.ok(queries.length >= 25, `${queries.length} queries`);
    const problems = missingFromExposition(queries, exposition);
    assert.deepEqual(problems, [], problems.join("\n"));
    // The traffic reached the histograms and counters the panels plot.
    const value = (text, name) => Number(new RegExp(`^${name}\\{[^}]*\\} (\\S+)$`, "m").exec(text)?.[1]);
    const text = await (await fetch(`${base}/metrics`)).text();
    assert.ok(value(text, "uniattn:time_to_first_token_seconds_count") >= 4);
    assert.ok(value(text, "uniattn:inter_token_latency_seconds_count") > 0);
    assert.ok(value(text, "uniattn:generation_tokens_total") > 0);
    assert.ok(value(text, "uniattn:prefix_cache_hits_total") > 0, "the repeated prompt hit the prefix cache");
    assert.ok(value(text, "uniattn:kv_bytes_per_token_dense") >= value(text, "uniattn:kv_bytes_per_token"));
    assert.ok(new RegExp(`^uniattn:num_requests_waiting\\{model_name="${config.model.name}"\\} `, "m").test(text),
      "num_requests_waiting carries model_name");
  });

  test("the comparison catches a metric the server does not export", () => {
    assert.ok(exposition, "needs the previous test's scrape");
    const problems = missingFromExposition([
      { where: "typo", expr: "sum(rate(uniattn:generation_token_total[$__rate_interval]))" },
      { where: "label", expr: "sum by (finish_reason) (uniattn:request_success_total)" },
      { where: "syntax", expr: "sum(rate(uniattn:generation_tokens_total[5m])" },
    ], exposition);
    assert.equal(problems.length, 3, problems.join("\n"));
    assert.match(problems[0], /generation_token_total is not exported/);
    assert.match(problems[1], /label finish_reason/);
    assert.match(problems[2], /syntax error/);
  });

  test("every query returns data in a real Prometheus scraping the server", async (t) => {
    const promBin = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"].find(existsSync);
    assert.ok(promBin, "prometheus is not installed: scripts/setup.sh installs Debian's prometheus package");
    const dir = mkdtempSync(join(tmpdir(), "uniattn-prom-"));
    const port = await freePort();
    // Relabel as the Prometheus Operator would (namespace, pod, service), so that the queries' matchers hold.
    writeFileSync(join(dir, "prometheus.yml"), YAML.stringify({
      global: { scrape_interval: "1s", evaluation_interval: "1s" },
      scrape_configs: [{
        job_name: "uniattn-serve",
        metrics_path: "/metrics",
        static_configs: [{
          targets: [`127.0.0.1:${srv.port}`],
          labels: { namespace: scaledObject.metadata.namespace, service: "uniattn-serve", pod: "uniattn-serve-0" },
        }],
      }],
    }));
    const prom = spawn(promBin, [`--config.file=${join(dir, "prometheus.yml")}`, `--storage.tsdb.path=${join(dir, "data")}`,
      `--web.listen-address=127.0.0.1:${port}`, "--log.level=warn"], { stdio: ["ignore", "ignore", "pipe"] });
    let promErr = "";
    prom.stderr.on("data", (d) => { promErr += d; });
    t.after(() => {
      prom.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    });
    const api = `http://127.0.0.1:${port}/api/v1`;
    const query = async (q) => {
      const r = await fetch(`${api}/query?query=${encodeURIComponent(q)}`);
      return r.json();
    };
    // Wait for a few scrapes, with traffic between them so that rates are not all zero.
    const deadline = Date.now() + 30000;
    let up = false;
    while (Date.now() < deadline && !up) {
      await sleep(500);
      try {
        const j = await query("up");
        up = j.data?.result?.some((s) => s.value[1] === "1");
      } catch { /* not listening yet */ }
    }
    assert.ok(up, `Prometheus never scraped the server; stderr:\n${promErr}`);
    await traffic(base);
    await sleep(3000);
    await traffic(base);
    await sleep(3000);
    const problems = [];
    for (const { where, expr } of allQueries()) {
      const q = expr.replaceAll("$__rate_interval", "30s").replaceAll("$namespace", ".*").replaceAll("$model_name", ".*");
      const promql = grafanaToPromql(q);
      const j = await query(promql);
      if (j.status !== "success") problems.push(`${where}: ${j.error}`);
      else if (!j.data.result.length) problems.push(`${where}: no data for ${promql}`);
    }
    assert.deepEqual(problems, [], problems.join("\n"));
    // The autoscaler's query as KEDA sends it, unchanged.
    const keda = await query(scaledObject.spec.triggers[0].metadata.query);
    assert.equal(keda.status, "success");
    assert.equal(keda.data.result.length, 1, "KEDA's query yields one number");
  });

  test("SIGTERM: /ready turns 503 or the process exits 0 within the drain timeout", async () => {
    const stream = fetch(`${base}/v1/completions`, {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "stories15M", prompt: "Once", max_tokens: 32, ignore_eos: true, stream: true }),
    }).then((r) => r.text()).catch((e) => `error: ${e.message}`);
    await sleep(50);
    const t0 = Date.now();
    srv.proc.kill("SIGTERM");
    // Readiness fails promptly (the pod leaves the Service), or the process is already gone.
    let ready = 200;
    while (ready === 200 && Date.now() - t0 < 2000) {
      ready = await fetch(`${base}/ready`).then((r) => r.status).catch(() => "closed");
      if (ready === 200) await sleep(10);
    }
    assert.ok(ready === 503 || ready === "closed", `/ready during drain: ${ready}`);
    const exit = await Promise.race([srv.exited, sleep((config.server.drain_timeout_s + 5) * 1000).then(() => "timeout")]);
    assert.deepEqual(exit, { code: 0, sig: null }, "exit status after SIGTERM");
    const secs = (Date.now() - t0) / 1000;
    const grace = deployment.spec.template.spec.terminationGracePeriodSeconds;
    assert.ok(secs < grace - 5, `drained in ${secs}s, grace period ${grace}s minus preStop`);
    const body = await stream;
    assert.match(body, /\[DONE\]/, "the in-flight stream finished");
  });
});

test("without the server binary the deploy tests fail with a clear message (they never skip)", () => {
  const saved = process.env.UNIATTN_SERVE;
  process.env.UNIATTN_SERVE = "/nonexistent/uniattn-serve";
  try {
    assert.throws(() => serverBinary(), /uniattn-serve is not built \(\/nonexistent\/uniattn-serve does not exist\)/);
  } finally {
    if (saved === undefined) delete process.env.UNIATTN_SERVE;
    else process.env.UNIATTN_SERVE = saved;
  }
});
