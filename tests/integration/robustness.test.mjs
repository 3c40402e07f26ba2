// What real clients do to servers: malformed and oversized requests, unknown routes, slow and half-closed
// connections, disconnects mid-stream. Each gets the right answer and the next request still succeeds.
import assert from "node:assert/strict";
import { connect } from "node:net";
import { after, before, describe, it } from "node:test";

import { metric, scrape, startServer, waitFor } from "./lib/harness.mjs";

let server;

before(async () => {
  server = await startServer(["--set", "server.max_body_bytes=64KiB"]);
});

after(async () => {
  const { code } = await server.stop();
  assert.equal(code, 0);
});

// Sends raw bytes (optionally in timed pieces), optionally half-closes, and collects everything the server
// sends until it closes the connection or `until` matches.
function raw(pieces, { halfClose = false, delayMs = 0, until = null, timeoutMs = 30000 } = {}) {
  return new Promise((resolveRaw, reject) => {
    const socket = connect(server.httpPort, "127.0.0.1");
    let data = "";
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no complete answer; got ${JSON.stringify(data.slice(0, 300))}`));
    }, timeoutMs);
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      resolveRaw(data);
    };
    socket.on("data", (d) => {
      data += d;
      if (until && until(data)) done();
    });
    socket.on("end", done);
    socket.on("error", (e) => (data ? done() : reject(e)));
    socket.on("connect", async () => {
      for (const p of Array.isArray(pieces) ? pieces : [pieces]) {
        socket.write(p);
        if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
      }
      if (halfClose) socket.end();
    });
  });
}

const request = (method, path, body = "", headers = "") =>
  `${method} ${path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n${headers}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;

function status(response) {
  const finals = [...response.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1])).filter((s) => s >= 200);
  return finals[0];
}

function jsonBody(response) {
  return JSON.parse(response.slice(response.lastIndexOf("\r\n\r\n") + 4));
}

async function stillServes() {
  const r = await fetch(`${server.baseURL}/v1/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ prompt: "Once", max_tokens: 2 }),
  });
  assert.equal(r.status, 200);
  assert.equal((await r.json()).usage.completion_tokens, 2);
}

describe("hostile and unusual clients", () => {
  it("malformed JSON: 400 in OpenAI's shape", async () => {
    const r = await raw(request("POST", "/v1/completions", '{"prompt": "a", "max_tokens": '), {
      until: (d) => d.includes("}}"),
    });
    assert.equal(status(r), 400);
    const e = jsonBody(r).error;
    assert.equal(e.type, "invalid_request_error");
    assert.match(e.message, /invalid JSON/);
    assert.ok("param" in e && "code" in e);
    await stillServes();
  });

  it("wrong types and out-of-range values: 400 naming the field", async () => {
    for (const [body, param] of [
      [{ prompt: "a", max_tokens: "ten" }, "max_tokens"],
      [{ prompt: "a", top_p: 1.5 }, "top_p"],
      [{ prompt: ["a", 3] }, "prompt"],
      [{ prompt: "a", stop: { x: 1 } }, "stop"],
      [{ prompt: "a", n: 0 }, "n"],
    ]) {
      const r = await fetch(`${server.baseURL}/v1/completions`, { method: "POST", body: JSON.stringify(body) });
      assert.equal(r.status, 400);
      assert.equal((await r.json()).error.param, param);
    }
    const chat = await fetch(`${server.baseURL}/v1/chat/completions`, {
      method: "POST",
      body: JSON.stringify({ messages: [{ role: "user", content: 42 }] }),
    });
    assert.equal(chat.status, 400);
    assert.equal((await chat.json()).error.param, "messages[0].content");
    await stillServes();
  });

  it("huge bodies: 413, whether declared or sent", async () => {
    const declared = await raw(
      "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\n" + "x".repeat(1000),
    );
    assert.equal(status(declared), 413);
    assert.equal(jsonBody(declared).error.code, "body_too_large");
    const big = JSON.stringify({ prompt: "a".repeat(200000) });
    const sent = await fetch(`${server.baseURL}/v1/completions`, { method: "POST", body: big }).catch((e) => e);
    if (!(sent instanceof Error)) assert.equal(sent.status, 413);
    await stillServes();
  });

  it("unknown routes: 404; wrong method: 405", async () => {
    const r = await fetch(`${server.baseURL}/v2/everything`);
    assert.equal(r.status, 404);
    assert.equal((await r.json()).error.code, "not_found");
    assert.equal((await fetch(`${server.baseURL}/v1/chat/completions`)).status, 405);
    const garbage = await raw("\x16\x03\x01\x02\x00garbage\r\n\r\n");
    assert.equal(status(garbage), 400);
    await stillServes();
  });

  it("slow clients: a request trickled in byte by byte is answered", async () => {
    const req = request("POST", "/v1/completions", JSON.stringify({ prompt: "Once", max_tokens: 2 }));
    const pieces = req.match(/[\s\S]{1,5}/g);
    const r = await raw(pieces, { delayMs: 15, until: (d) => d.includes('"usage"') });
    assert.equal(status(r), 200);
    assert.equal(jsonBody(r).usage.completion_tokens, 2);
    await stillServes();
  });

  it("half-closed connections: the answer still arrives, then the server closes", async () => {
    const health = await raw(request("GET", "/health"), { halfClose: true });
    assert.equal(status(health), 200);
    const completion = await raw(request("POST", "/v1/completions", JSON.stringify({ prompt: "Once", max_tokens: 3 })), {
      halfClose: true,
    });
    assert.equal(status(completion), 200);
    assert.equal(jsonBody(completion).usage.completion_tokens, 3);
    // A request cut short by a half-close gets a 400, not a hang.
    const cut = await raw("POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"prom", {
      halfClose: true,
    });
    assert.equal(status(cut), 400);
    await stillServes();
  });

  it("keep-alive and pipelining on one connection", async () => {
    const body = JSON.stringify({ prompt: "Once", max_tokens: 1 });
    const r = await raw(request("POST", "/v1/completions", body) + request("GET", "/ready") + request("POST", "/tokenize", '{"prompt":"a"}'), {
      until: (d) => d.includes('"tokens"'),
    });
    const statuses = [...r.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));
    assert.deepEqual(statuses, [200, 200, 200]);
  });

  it("a client that disconnects mid-stream frees its blocks (seen in the metrics)", async () => {
    const before = await scrape(server.baseURL);
    const aborts0 = metric(before, "uniattn:request_success_total", { finished_reason: "abort" });
    const disconnects0 = metric(before, "uniattn:client_disconnects_total");
    const body = JSON.stringify({ prompt: "Once upon a time", max_tokens: 200, ignore_eos: true, stream: true });
    await raw(request("POST", "/v1/completions", body), { until: (d) => (d.match(/data: \{/g) ?? []).length >= 2 });
    // raw() destroyed the socket after the second token.
    const after = await waitFor(
      async () => {
        const s = await scrape(server.baseURL);
        const gone =
          metric(s, "uniattn:num_requests_running") === 0 &&
          metric(s, "uniattn:num_requests_waiting") === 0 &&
          metric(s, "uniattn:kv_cache_bytes") === 0 &&
          metric(s, "uniattn:kv_cache_usage_perc") === 0 &&
          metric(s, "uniattn:request_success_total", { finished_reason: "abort" }) === aborts0 + 1;
        return gone && s;
      },
      { what: "the disconnected request's blocks to be freed" },
    );
    assert.equal(metric(after, "uniattn:client_disconnects_total"), disconnects0 + 1);
    assert.ok(metric(after, "uniattn:generation_tokens_total") - metric(before, "uniattn:generation_tokens_total") < 150);
    await stillServes();
  });

  it("a client that disconnects while waiting for a non-streamed answer cancels it too", async () => {
    const before = await scrape(server.baseURL);
    const aborts0 = metric(before, "uniattn:request_success_total", { finished_reason: "abort" });
    const body = JSON.stringify({ prompt: "Once upon a time", max_tokens: 200, ignore_eos: true });
    const socket = connect(server.httpPort, "127.0.0.1");
    await new Promise((r) => socket.on("connect", r));
    socket.write(request("POST", "/v1/completions", body));
    await waitFor(async () => metric(await scrape(server.baseURL), "uniattn:num_requests_running") === 1, {
      what: "the request to run",
    });
    socket.destroy();
    await waitFor(
      async () => {
        const s = await scrape(server.baseURL);
        return (
          metric(s, "uniattn:num_requests_running") === 0 &&
          metric(s, "uniattn:kv_cache_bytes") === 0 &&
          metric(s, "uniattn:request_success_total", { finished_reason: "abort" }) === aborts0 + 1
        );
      },
      { what: "the abandoned request to be cancelled" },
    );
    await stillServes();
  });

  it("CORS preflight is answered when configured (and not otherwise)", async () => {
    const r = await fetch(`${server.baseURL}/v1/completions`, {
      method: "OPTIONS",
      headers: { Origin: "http://app.example", "Access-Control-Request-Method": "POST" },
    });
    assert.equal(r.status, 204);
    assert.equal(r.headers.get("access-control-allow-origin"), null);
  });
});
