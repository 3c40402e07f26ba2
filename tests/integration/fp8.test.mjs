// FP8 as a user turns it on (issue 18): uniattn-serve with engine.quantization=fp8 and engine.kv_cache_dtype=fp8
// on the default model, driven by the official `openai` client; /metrics shows the larger pool; an FP8 checkpoint
// written by `uniattn-convert fp8` serves the same way; an fp8_e5m2 KV cache is refused by name before loading.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";

import { metric, scrape, serveBinary, sourceDir, startServer, waitFor } from "./lib/harness.mjs";

const POOL = "8MiB";

describe("fp8 weights and KV cache through the openai client", () => {
  let fp8;
  let fp32;
  before(async () => {
    fp8 = await startServer(["--set", "engine.quantization=fp8", "--set", "engine.kv_cache_dtype=fp8",
      "--set", `engine.kv_cache_bytes=${POOL}`]);
    fp32 = await startServer(["--set", `engine.kv_cache_bytes=${POOL}`]);
  });
  after(async () => {
    assert.equal((await fp8.stop()).code, 0);
    assert.equal((await fp32.stop()).code, 0);
  });

  it("tells the story, streamed or not, and the pool holds four times the tokens", async () => {
    const client = new OpenAI({ baseURL: `${fp8.baseURL}/v1`, apiKey: "none", maxRetries: 0, timeout: 60000 });
    const c = await client.completions.create({ model: fp8.model, prompt: "Once upon a time", max_tokens: 10,
      temperature: 0 });
    assert.match(c.choices[0].text, /^, there was a little girl named Lily\./);
    let streamed = "";
    for await (const chunk of await client.completions.create({ model: fp8.model, prompt: "Once upon a time",
      max_tokens: 10, temperature: 0, stream: true })) {
      for (const ch of chunk.choices) streamed += ch.text;
    }
    assert.equal(streamed, c.choices[0].text);
    const chat = await client.chat.completions.create({ model: fp8.model, max_tokens: 8,
      messages: [{ role: "user", content: "Tell me about a cat." }] });
    assert.ok(chat.choices[0].message.content.length > 0);

    const a = await scrape(fp8.baseURL);
    const b = await scrape(fp32.baseURL);
    const tokens8 = metric(a, "uniattn:kv_cache_tokens_total");
    const tokens32 = metric(b, "uniattn:kv_cache_tokens_total");
    assert.equal(tokens8, metric(a, "uniattn:kv_cache_blocks_total") * 16);
    assert.ok(tokens8 >= 4 * tokens32, `${tokens8} vs ${tokens32}`);
    assert.equal(metric(a, "uniattn:kv_bytes_per_token") * 4, metric(b, "uniattn:kv_bytes_per_token"));
    // The last request's blocks are freed at the end of the engine step that answered it, which may come just
    // after the answer: wait for it rather than race it.
    await waitFor(async () => metric(await scrape(fp8.baseURL), "uniattn:kv_cache_blocks_used") === 0, {
      what: "the fp8 server's KV blocks to be freed",
    });
    assert.match(fp8.stderr(), /fp8 e4m3 KV cache, scales per layer and KV head measured at load/);
  });
});

describe("an FP8 checkpoint from uniattn-convert fp8", () => {
  let dir;
  let server;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "uniattn-fp8-"));
    const convert = resolve(serveBinary, "../uniattn-convert");
    const r = spawnSync(convert, ["fp8", "--model", "models/stories15M", "--out", join(dir, "m"), "--method", "rtn"],
      { cwd: sourceDir, encoding: "utf8", timeout: 120000 });
    assert.equal(r.status, 0, r.stderr);
    server = await startServer(["--set", `model.path=${join(dir, "m")}`, "--set", "model.name=stories15M-fp8"]);
  });
  after(async () => {
    if (server) assert.equal((await server.stop()).code, 0);
    rmSync(dir, { recursive: true, force: true });
  });

  it("loads through its quantization_config and serves", async () => {
    const client = new OpenAI({ baseURL: `${server.baseURL}/v1`, apiKey: "none", maxRetries: 0, timeout: 60000 });
    const c = await client.completions.create({ model: "stories15M-fp8", prompt: "Once upon a time", max_tokens: 10,
      temperature: 0 });
    assert.match(c.choices[0].text, /^, there was a little girl named Lily\./);
    assert.match(server.stderr(), /linear weights hold fp8 e4m3 values \(checkpoint quant_method compressed-tensors/);
  });
});

describe("fp8 where it is not supported", () => {
  it("an fp8_e5m2 KV cache is refused by name before loading anything", () => {
    const r = spawnSync(serveBinary, ["--config", "config/default.yaml", "--port", "0", "--grpc-port", "0", "--set",
      "engine.kv_cache_dtype=fp8_e5m2"], { cwd: sourceDir, encoding: "utf8", timeout: 60000 });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /engine\.kv_cache_dtype/);
  });
});
