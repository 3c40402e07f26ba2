// A gRPC client not written in C++ (@grpc/grpc-js + @grpc/proto-loader) against the real server.
import assert from "node:assert/strict";
import { resolve } from "node:path";
import { after, before, describe, it } from "node:test";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

import { metric, scrape, sourceDir, startServer, waitFor } from "./lib/harness.mjs";

const loadOptions = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };
const uniattn = grpc.loadPackageDefinition(
  protoLoader.loadSync(resolve(sourceDir, "proto/uniattn/v1/uniattn.proto"), {
    ...loadOptions,
    includeDirs: [resolve(sourceDir, "proto")],
  }),
).uniattn.v1;
const health = grpc.loadPackageDefinition(
  protoLoader.loadSync(resolve(sourceDir, "tests/integration/protos/health.proto"), loadOptions),
).grpc.health.v1;

let server;
let client;

before(async () => {
  server = await startServer();
  client = new uniattn.UniAttn(server.grpcAddress, grpc.credentials.createInsecure());
});

after(async () => {
  client.close();
  const { code } = await server.stop();
  assert.equal(code, 0);
});

const unary = (method, request) =>
  new Promise((resolveCall, reject) =>
    client[method](request, (err, response) => (err ? reject(err) : resolveCall(response))),
  );

function generate(request) {
  return new Promise((resolveCall, reject) => {
    const messages = [];
    const call = client.Generate(request);
    call.on("data", (m) => messages.push(m));
    call.on("error", reject);
    call.on("end", () => resolveCall(messages));
  });
}

describe("gRPC", () => {
  it("health answers SERVING", async () => {
    const h = new health.Health(server.grpcAddress, grpc.credentials.createInsecure());
    for (const service of ["", "uniattn.v1.UniAttn"]) {
      const r = await new Promise((res, rej) => h.Check({ service }, (e, v) => (e ? rej(e) : res(v))));
      assert.equal(r.status, "SERVING");
    }
    h.close();
  });

  it("GetModelInfo reports KV bytes per token, dense and unified", async () => {
    const info = await unary("GetModelInfo", {});
    assert.equal(info.name, "stories15M");
    assert.equal(info.max_model_len, 256);
    assert.equal(info.num_layers, 6);
    // 6 layers * 2 (K and V) * 6 heads * 48 dims * 4 bytes.
    assert.equal(info.kv_bytes_per_token_dense, 6 * 2 * 6 * 48 * 4);
    assert.ok(info.kv_bytes_per_token > 0 && info.kv_bytes_per_token <= info.kv_bytes_per_token_dense);
    assert.equal(info.chat_template, "plain");
  });

  it("Tokenize matches HTTP /tokenize", async () => {
    const g = await unary("Tokenize", { text: "Once upon a time" });
    const h = await (await fetch(`${server.baseURL}/tokenize`, { method: "POST", body: '{"prompt":"Once upon a time"}' })).json();
    assert.deepEqual(g.token_ids, h.tokens);
    const d = await unary("Detokenize", { token_ids: g.token_ids });
    assert.equal(d.text, "Once upon a time");
  });

  it("greedy streamed output equals the HTTP output", async () => {
    const messages = await generate({ text: "Once upon a time", max_tokens: 12, sampling: { temperature: 0 }, logprobs: 1 });
    const last = messages.at(-1);
    assert.notEqual(last.finish_reason, "FINISH_REASON_UNSPECIFIED");
    const text = messages.map((m) => m.text).join("");
    const ids = messages.flatMap((m) => m.token_ids);
    assert.equal(last.usage.completion_tokens, ids.length);
    assert.equal(last.usage.prompt_tokens, 5);
    for (const m of messages) assert.equal(m.logprobs.length, m.token_ids.length);
    const http = await (
      await fetch(`${server.baseURL}/v1/completions`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 12, temperature: 0 }),
      })
    ).json();
    assert.equal(text, http.choices[0].text);
    assert.equal(last.finish_reason, `FINISH_REASON_${http.choices[0].finish_reason.toUpperCase()}`);
  });

  it("errors are gRPC status codes", async () => {
    await assert.rejects(generate({ text: "x", model: "nope" }), (e) => e.code === grpc.status.NOT_FOUND);
    await assert.rejects(
      generate({ text: "a ".repeat(400), max_tokens: 4 }),
      (e) => e.code === grpc.status.INVALID_ARGUMENT && /256/.test(e.details),
    );
    await assert.rejects(
      generate({ text: "x", sampling: { top_p: 2 } }),
      (e) => e.code === grpc.status.INVALID_ARGUMENT && /top_p/.test(e.details),
    );
  });

  it("cancellation cancels the request and frees its blocks", async () => {
    const before = await scrape(server.baseURL);
    const aborts0 = metric(before, "uniattn:request_success_total", { finished_reason: "abort" }) ?? 0;
    const call = client.Generate({ text: "Once upon a time", max_tokens: 200, sampling: { ignore_eos: true } });
    const errored = new Promise((res) => call.on("error", res));
    await new Promise((res) => call.once("data", res));
    // Engine stats are published after each step: the first token can arrive just before them.
    await waitFor(
      async () => {
        const s = await scrape(server.baseURL);
        return metric(s, "uniattn:num_requests_running") === 1 && metric(s, "uniattn:kv_cache_bytes") > 0;
      },
      { what: "the request to show as running" },
    );
    call.cancel();
    assert.equal((await errored).code, grpc.status.CANCELLED);
    await waitFor(
      async () => {
        const s = await scrape(server.baseURL);
        return (
          metric(s, "uniattn:num_requests_running") === 0 &&
          metric(s, "uniattn:kv_cache_bytes") === 0 &&
          metric(s, "uniattn:request_success_total", { finished_reason: "abort" }) === aborts0 + 1
        );
      },
      { what: "the cancelled request to leave the engine" },
    );
    // Far fewer than 200 tokens were generated for it.
    const after = await scrape(server.baseURL);
    assert.ok(metric(after, "uniattn:generation_tokens_total") - metric(before, "uniattn:generation_tokens_total") < 150);
  });
});
