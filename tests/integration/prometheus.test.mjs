// A real Prometheus server (Debian's /usr/bin/prometheus) scrapes /metrics; the test asks Prometheus's own
// HTTP API for the uniattn: series and checks their values after known traffic.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";

import { freePort, metric, scrape, startServer, waitFor } from "./lib/harness.mjs";

const PROMETHEUS = process.env.PROMETHEUS ?? "/usr/bin/prometheus";
const skip = existsSync(PROMETHEUS) ? false : `${PROMETHEUS} not installed`;

let server;
let prometheus;
let promURL;
let dir;

before(async () => {
  if (skip) return;
  server = await startServer();
  dir = mkdtempSync(join(tmpdir(), "uniattn-prom-"));
  const config = join(dir, "prometheus.yml");
  writeFileSync(
    config,
    [
      "global:",
      "  scrape_interval: 500ms",
      "  scrape_timeout: 400ms",
      "scrape_configs:",
      "  - job_name: uniattn",
      "    static_configs:",
      `      - targets: ["127.0.0.1:${server.httpPort}"]`,
      "",
    ].join("\n"),
  );
  const port = await freePort();
  promURL = `http://127.0.0.1:${port}`;
  prometheus = spawn(
    PROMETHEUS,
    [
      `--config.file=${config}`,
      `--storage.tsdb.path=${join(dir, "data")}`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--log.level=warn",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let promErr = "";
  prometheus.stderr.on("data", (d) => (promErr += d));
  await waitFor(
    async () => {
      if (prometheus.exitCode !== null) throw new Error(`prometheus exited:\n${promErr}`);
      return fetch(`${promURL}/-/ready`).then((r) => r.ok).catch(() => false);
    },
    { timeoutMs: 60000, what: "Prometheus to be ready" },
  );
});

after(async () => {
  if (skip) return;
  if (prometheus && prometheus.exitCode === null) {
    const exited = new Promise((r) => prometheus.on("exit", r));
    prometheus.kill("SIGTERM");
    await exited;
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
  const { code } = await server.stop();
  assert.equal(code, 0);
});

async function query(expr) {
  const r = await fetch(`${promURL}/api/v1/query?query=${encodeURIComponent(expr)}`);
  const body = await r.json();
  assert.equal(body.status, "success", JSON.stringify(body));
  return body.data.result;
}

async function value(expr) {
  const result = await query(expr);
  return result.length === 1 ? Number(result[0].value[1]) : undefined;
}

async function post(path, body) {
  const r = await fetch(`${server.baseURL}${path}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(r.status, 200);
  return r.json();
}

describe("Prometheus scrapes uniattn-serve", { skip }, () => {
  it("sees every uniattn: series with the values of known traffic", async () => {
    // Known traffic: 4 requests that each run to max_tokens (ignore_eos), 3 + 3 + 3 + 4 = 13 tokens.
    const prompt = "Once upon a time"; // 5 tokens with BOS
    for (let i = 0; i < 3; ++i) await post("/v1/completions", { prompt, max_tokens: 3, ignore_eos: true });
    const chat = await post("/v1/chat/completions", {
      messages: [{ role: "user", content: prompt }],
      max_tokens: 4,
      ignore_eos: true,
    });
    assert.equal(chat.usage.prompt_tokens, 5);

    const sel = '{job="uniattn",model_name="stories15M"}';
    await waitFor(async () => (await value(`uniattn:request_success_total{finished_reason="length"}`)) === 4, {
      timeoutMs: 30000,
      what: "Prometheus to scrape the finished requests",
    });
    assert.equal(await value(`up{job="uniattn"}`), 1);
    assert.equal(await value(`uniattn:request_success_total${sel.replace("}", ',finished_reason="stop"}')}`), 0);
    assert.equal(await value(`uniattn:generation_tokens_total${sel}`), 13);
    assert.equal(await value(`uniattn:request_generation_tokens_sum${sel}`), 13);
    assert.equal(await value(`uniattn:request_generation_tokens_count${sel}`), 4);
    assert.equal(await value(`uniattn:request_prompt_tokens_sum${sel}`), 20);
    assert.equal(await value(`uniattn:e2e_request_latency_seconds_count${sel}`), 4);
    assert.equal(await value(`uniattn:time_to_first_token_seconds_count${sel}`), 4);
    // Inter-token latencies: max_tokens - 1 per request.
    assert.equal(await value(`uniattn:inter_token_latency_seconds_count${sel}`), 2 + 2 + 2 + 3);
    assert.equal(await value(`uniattn:num_requests_running${sel}`), 0);
    assert.equal(await value(`uniattn:num_requests_waiting${sel}`), 0);
    assert.equal(await value(`uniattn:kv_cache_usage_perc${sel}`), 0);
    assert.equal(await value(`uniattn:kv_cache_bytes${sel}`), 0);
    assert.equal(await value(`uniattn:kv_bytes_per_token_dense${sel}`), 6 * 2 * 6 * 48 * 4);
    assert.ok((await value(`uniattn:kv_bytes_per_token${sel}`)) > 0);
    assert.ok((await value(`uniattn:kv_cache_bytes_total${sel}`)) > 0);
    assert.equal(await value(`uniattn:num_preemptions_total${sel}`), 0);
    assert.ok((await value(`uniattn:iteration_tokens_total_count${sel}`)) >= 4);
    assert.ok((await value(`uniattn:step_duration_seconds_count{phase="forward",model_name="stories15M"}`)) >= 4);
    // Prometheus saw what /metrics says.
    const own = await scrape(server.baseURL);
    for (const name of ["prompt_tokens_total", "prefix_cache_queries_total", "prefix_cache_hits_total"]) {
      assert.equal(await value(`uniattn:${name}${sel}`), metric(own, `uniattn:${name}`), name);
    }
    // The extra sub-10 ms inter-token buckets exist.
    for (const le of ["0.001", "0.002", "0.005", "0.01"]) {
      assert.equal((await query(`uniattn:inter_token_latency_seconds_bucket{le="${le}"}`)).length, 1, le);
    }

    const names = (await (await fetch(`${promURL}/api/v1/label/__name__/values`)).json()).data;
    for (const name of [
      "uniattn:num_requests_running",
      "uniattn:num_requests_waiting",
      "uniattn:kv_cache_usage_perc",
      "uniattn:prompt_tokens_total",
      "uniattn:generation_tokens_total",
      "uniattn:request_success_total",
      "uniattn:num_preemptions_total",
      "uniattn:prefix_cache_queries_total",
      "uniattn:prefix_cache_hits_total",
      "uniattn:time_to_first_token_seconds_bucket",
      "uniattn:inter_token_latency_seconds_bucket",
      "uniattn:e2e_request_latency_seconds_bucket",
      "uniattn:request_queue_time_seconds_bucket",
      "uniattn:request_prefill_time_seconds_bucket",
      "uniattn:request_decode_time_seconds_bucket",
      "uniattn:request_prompt_tokens_bucket",
      "uniattn:request_generation_tokens_bucket",
      "uniattn:iteration_tokens_total_bucket",
      "uniattn:kv_cache_bytes",
      "uniattn:kv_bytes_per_token",
      "uniattn:kv_bytes_per_token_dense",
      "uniattn:step_duration_seconds_bucket",
    ]) {
      assert.ok(names.includes(name), `Prometheus has no series ${name}`);
    }
  });
});
