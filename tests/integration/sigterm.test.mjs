// SIGTERM under load: readiness goes 503, new requests are refused, in-flight requests finish, exit 0.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { metric, scrape, startServer, waitFor } from "./lib/harness.mjs";

async function completion(baseURL, body) {
  const r = await fetch(`${baseURL}/v1/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

// Reads a completion stream to [DONE]; returns the text, the finish reason and when the first token came.
async function stream(baseURL, body, onFirstToken) {
  const r = await fetch(`${baseURL}/v1/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, stream: true }),
  });
  assert.equal(r.status, 200);
  const decoder = new TextDecoder();
  let buffer = "";
  let text = "";
  let finish;
  let done = false;
  let tokens = 0;
  for await (const bytes of r.body) {
    buffer += decoder.decode(bytes, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith("data: ")) continue;
      const payload = event.slice(6);
      if (payload === "[DONE]") {
        done = true;
        continue;
      }
      const chunk = JSON.parse(payload);
      for (const c of chunk.choices) {
        text += c.text;
        if (c.text && ++tokens === 1 && onFirstToken) onFirstToken();
        if (c.finish_reason) finish = c.finish_reason;
      }
    }
  }
  return { text, finish, done };
}

describe("SIGTERM", () => {
  it("under load: readiness 503, new work refused, in-flight requests finish, exit 0", async () => {
    const server = await startServer();
    const { baseURL } = server;
    // Long enough that every request is still in flight when SIGTERM comes, even on an idle machine (the
    // default model decodes hundreds of tokens/s); stories15M's context is 256.
    const body = { prompt: "Once upon a time", max_tokens: 200, ignore_eos: true };
    try {
      let started = 0;
      const inflight = [
        stream(baseURL, body, () => ++started),
        stream(baseURL, body, () => ++started),
        completion(baseURL, body),
        completion(baseURL, { ...body, n: 2 }),
      ];
      await waitFor(async () => started === 2, { what: "the streams to start" });
      await waitFor(
        async () => {
          const s = await scrape(baseURL);
          return metric(s, "uniattn:num_requests_running") + metric(s, "uniattn:num_requests_waiting") >= 4;
        },
        { what: "four requests in the engine" },
      );
      const exited = server.stop("SIGTERM");

      // Readiness turns 503 right away and new requests are refused, while the old ones still run.
      const ready = await waitFor(
        async () => {
          const r = await fetch(`${baseURL}/ready`);
          return r.status === 503 && (await r.json());
        },
        { timeoutMs: 5000, what: "/ready to turn 503" },
      );
      assert.equal(ready.status, "draining");
      const refused = await completion(baseURL, body);
      assert.equal(refused.status, 503);
      assert.equal(refused.body.error.code, "draining");

      const [s1, s2, c1, c2] = await Promise.all(inflight);
      for (const s of [s1, s2]) {
        assert.equal(s.finish, "length");
        assert.ok(s.done);
      }
      assert.equal(c1.status, 200);
      assert.equal(c1.body.usage.completion_tokens, 200);
      assert.equal(c2.status, 200);
      assert.deepEqual(
        c2.body.choices.map((c) => c.finish_reason),
        ["length", "length"],
      );
      assert.ok(s1.text.length > 0 && s2.text.length > 0);
      const { code, signal } = await exited;
      assert.equal(signal, null);
      assert.equal(code, 0);
    } finally {
      // A failed assertion must not leave the server (and this test) running until ctest's timeout.
      server.child.kill("SIGKILL");
    }
  });

  it("past the drain timeout, what still runs is aborted cleanly and the process exits 0", async () => {
    const server = await startServer(["--set", "server.drain_timeout_s=0.5"]);
    try {
      let first;
      const firstToken = new Promise((r) => (first = r));
      const long = stream(server.baseURL, { prompt: "Once upon a time", max_tokens: 250, ignore_eos: true }, first);
      await firstToken;
      const t0 = Date.now();
      const { code } = await server.stop("SIGTERM");
      assert.equal(code, 0);
      assert.ok(Date.now() - t0 < 10000);
      const s = await long;
      assert.equal(s.finish, "abort");
      assert.ok(s.done, "the stream still ends with [DONE]");
    } finally {
      server.child.kill("SIGKILL");
    }
  });
});
