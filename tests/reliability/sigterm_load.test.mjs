// SIGTERM under heavy load (the heavier twin of tests/integration/sigterm.test.mjs): 224 streaming requests
// accepted by the engine, most of them still running or queued, when SIGTERM arrives. Readiness turns 503,
// new requests get 503 `draining`, every accepted request still runs to its last token, and the process
// exits 0.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { startServer, waitFor } from "../integration/lib/harness.mjs";
import { completion, countByKind, streamCompletion } from "./lib/clients.mjs";

const kStreams = 224;
const kMaxTokens = 16;

describe("SIGTERM under load", () => {
  it(`${kStreams} accepted streams when SIGTERM comes: all finish, then exit 0`, async () => {
    const server = await startServer([
      "--set", "engine.max_num_seqs=128",
      "--set", "engine.max_num_batched_tokens=1024",
      "--set", "engine.max_queued_requests=1024",
      // The drain must not cut the test short on a slow machine: what is asserted is that nothing is lost.
      "--set", "server.drain_timeout_s=150",
    ]);
    const { baseURL } = server;
    try {
      let accepted = 0;
      let finished = 0;
      const streams = Array.from({ length: kStreams }, (_, i) =>
        streamCompletion(baseURL, { prompt: "Once upon a time", max_tokens: kMaxTokens, ignore_eos: true, seed: i, temperature: 1 }, {
          onHeaders: (status) => status === 200 && ++accepted,
        }).then((r) => {
          ++finished;
          return r;
        }),
      );
      // A 200 (the SSE headers) is sent only once the engine accepted the request.
      await waitFor(async () => accepted === kStreams, { timeoutMs: 60000, what: "every stream to be accepted" });
      const unfinishedAtSignal = kStreams - finished;
      const exited = server.stop("SIGTERM");

      const ready = await waitFor(
        async () => {
          const r = await fetch(`${baseURL}/ready`);
          return r.status === 503 && (await r.json());
        },
        { timeoutMs: 10000, what: "/ready to turn 503" },
      );
      assert.equal(ready.status, "draining");
      const refused = await completion(baseURL, { prompt: "Once", max_tokens: 2 });
      assert.equal(refused.kind, "http_503");
      assert.equal(refused.error.code, "draining");
      assert.equal(refused.error.type, "service_unavailable_error");

      const results = await Promise.all(streams);
      const { code, signal } = await exited;
      console.log(`sigterm under load: ${kStreams} streams accepted, ${unfinishedAtSignal} unfinished at SIGTERM; outcomes ${JSON.stringify(countByKind(results))}; exit code ${code}`);
      assert.ok(unfinishedAtSignal > 0, "the signal came while requests were in flight");
      assert.deepEqual(countByKind(results), { ok: kStreams });
      for (const r of results) {
        assert.equal(r.finish, "length", "drained to the end, not aborted");
        assert.equal(r.usage.completion_tokens, kMaxTokens);
        assert.equal(r.tokens, kMaxTokens);
      }
      assert.equal(signal, null);
      assert.equal(code, 0);
    } finally {
      server.child.kill("SIGKILL");
    }
  });
});
