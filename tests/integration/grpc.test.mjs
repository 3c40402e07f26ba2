// A gRPC client not written in C++ (@grpc/grpc-js + @grpc/proto-loader) against the real server.
import assert from "node:assert/strict";
import { readFileSync, mkdtempSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
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

// A client that sends raw bytes where the contract has text (the *Request messages' string fields as
// bytes, as the server compiles them): the only way to put text that is not UTF-8 on the wire.
const rawProtoDir = mkdtempSync(join(tmpdir(), "uniattn-rawproto-"));
mkdirSync(join(rawProtoDir, "uniattn/v1"), { recursive: true });
{
  let inRequest = false;
  const lines = readFileSync(resolve(sourceDir, "proto/uniattn/v1/uniattn.proto"), "utf8").split("\n").map((line) => {
    if (/^message \w*Request *\{ *$/.test(line)) inRequest = true;
    else if (/^\}/.test(line)) inRequest = false;
    return inRequest ? line.replace(/^( *)(repeated )?string /, "$1$2bytes ") : line;
  });
  writeFileSync(join(rawProtoDir, "uniattn/v1/uniattn.proto"), lines.join("\n"));
}
const raw = grpc.loadPackageDefinition(
  protoLoader.loadSync(join(rawProtoDir, "uniattn/v1/uniattn.proto"), { ...loadOptions, includeDirs: [rawProtoDir] }),
).uniattn.v1;

let server;
let client;
let rawClient;

before(async () => {
  server = await startServer();
  client = new uniattn.UniAttn(server.grpcAddress, grpc.credentials.createInsecure());
  rawClient = new raw.UniAttn(server.grpcAddress, grpc.credentials.createInsecure());
});

after(async () => {
  client.close();
  rawClient.close();
  const { code } = await server.stop();
  assert.equal(code, 0);
});

const unary = (method, request) =>
  new Promise((resolveCall, reject) =>
    client[method](request, (err, response) => (err ? reject(err) : resolveCall(response))),
  );

function generate(request, via = client) {
  return new Promise((resolveCall, reject) => {
    const messages = [];
    const call = via.Generate(request);
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

  // The limits are written once (uniattn/request.h): the same field gets the same message and the same
  // param, OpenAI's `param` over HTTP and the `error-param` trailer over gRPC.
  it("the same invalid field gets the same param and message over HTTP and gRPC", async () => {
    const cases = [
      { http: { prompt: "Hi", temperature: -1 }, grpc: { text: "Hi", sampling: { temperature: -1 } }, param: "temperature" },
      { http: { prompt: "Hi", n: 1000 }, grpc: { text: "Hi", n: 1000 }, param: "n" },
      { http: { prompt: "Hi", top_p: 0 }, grpc: { text: "Hi", sampling: { top_p: 0 } }, param: "top_p" },
      { http: { prompt: "a ".repeat(400) }, grpc: { text: "a ".repeat(400) }, param: "prompt" },
      { http: { prompt: "Hi", max_tokens: 2147483647 }, grpc: { text: "Hi", max_tokens: 2147483647 }, param: "prompt" },
      { http: { prompt: [1, 32000] }, grpc: { token_ids: { ids: [1, 32000] } }, param: "prompt" },
    ];
    for (const c of cases) {
      const res = await fetch(`${server.baseURL}/v1/completions`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(c.http),
      });
      assert.equal(res.status, 400, JSON.stringify(c.http));
      const { error } = await res.json();
      assert.equal(error.param, c.param);
      const e = await generate(c.grpc).then(
        () => assert.fail(`gRPC accepted ${JSON.stringify(c.grpc)}`),
        (err) => err,
      );
      assert.equal(e.code, grpc.status.INVALID_ARGUMENT, JSON.stringify(c.grpc));
      assert.equal(e.details, error.message);
      assert.deepEqual(e.metadata.get("error-param"), [c.param]);
    }
  });

  it("max_tokens of 2147483647 is context_length_exceeded over HTTP completions and chat", async () => {
    const post = (path, body) =>
      fetch(`${server.baseURL}${path}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const messages = [{ role: "user", content: "Hi" }];
    for (const [path, body] of [
      ["/v1/completions", { prompt: "Hi", max_tokens: 2147483647 }],
      ["/v1/completions", { prompt: "Hi", max_tokens: 2147483646 }],
      ["/v1/chat/completions", { messages, max_tokens: 2147483647 }],
      ["/v1/chat/completions", { messages, max_completion_tokens: 2147483647 }],
    ]) {
      const res = await post(path, body);
      assert.equal(res.status, 400, JSON.stringify(body));
      assert.equal((await res.json()).error.code, "context_length_exceeded");
    }
  });

  it("text that is not UTF-8 is INVALID_ARGUMENT naming the field, and the server keeps serving", async () => {
    const bad = Buffer.from([0x48, 0x69, 0xff, 0xfe]);
    const calls = [
      ["text", () => generate({ text: bad, max_tokens: 2 }, rawClient)],
      ["model", () => generate({ text: Buffer.from("Hi"), model: bad }, rawClient)],
      ["stop", () => generate({ text: Buffer.from("Hi"), stop: [bad] }, rawClient)],
      ["text", () => new Promise((res, rej) => rawClient.Tokenize({ text: bad }, (e, v) => (e ? rej(e) : res(v))))],
    ];
    for (const [field, call] of calls) {
      const e = await call().then(() => assert.fail(`${field} accepted`), (err) => err);
      assert.equal(e.code, grpc.status.INVALID_ARGUMENT, `${field}: ${e.code} ${e.details}`);
      assert.match(e.details, new RegExp(`^${field}: not valid UTF-8 \\(at byte 2\\)`));
      assert.deepEqual(e.metadata.get("error-param"), [field]);
    }
    const ok = await generate({ text: Buffer.from("Once upon a time"), max_tokens: 3, sampling: { temperature: 0 } }, rawClient);
    assert.equal(ok.at(-1).usage.completion_tokens, 3);
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
