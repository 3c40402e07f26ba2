// Queue overflow: with two running slots and a queue of four, a burst of requests gets 429 in OpenAI's error
// shape for everything past the queue, while every accepted request completes with its full token count.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { metric, startServer } from "../integration/lib/harness.mjs";
import { completion, countByKind, stillServes, streamCompletion, waitIdle } from "./lib/clients.mjs";

const kBurst = 32;
const kMaxTokens = 100;

describe("queue overflow", () => {
  it(`a burst of ${kBurst} requests at max_num_seqs=2, max_queued_requests=4: 429 queue_full past the queue`, async () => {
    const server = await startServer(["--set", "engine.max_num_seqs=2", "--set", "engine.max_queued_requests=4"]);
    const { baseURL } = server;
    try {
      const body = { prompt: "Once upon a time", max_tokens: kMaxTokens, ignore_eos: true };
      const results = await Promise.all(
        Array.from({ length: kBurst }, (_, i) => (i % 2 ? completion(baseURL, body) : streamCompletion(baseURL, body))),
      );
      const idle = await waitIdle(baseURL);
      const byKind = countByKind(results);
      const rejected = metric(idle.samples, "uniattn:http_responses_total", { code: "429" });
      console.log(`queue overflow: ${kBurst} requests: ${JSON.stringify(byKind)}; http_responses_total{code="429"} ${rejected}; KV blocks in use after ${idle.blocksUsed}`);

      assert.deepEqual(Object.keys(byKind), ["http_429", "ok"], "each request is either served or refused with 429");
      // At least what the queue and the running slots hold was accepted; the rest of the burst cannot fit.
      assert.ok(byKind.ok >= 4, `only ${byKind.ok} accepted`);
      assert.equal(rejected, byKind.http_429);
      for (const r of results) {
        if (r.kind === "ok") {
          assert.equal(r.usage.completion_tokens, kMaxTokens);
          assert.equal(r.finish, "length");
          continue;
        }
        // OpenAI's shape, which the official clients turn into RateLimitError.
        assert.equal(r.error.type, "rate_limit_error");
        assert.equal(r.error.code, "queue_full");
        assert.match(r.error.message, /queue is full/);
        assert.ok("param" in r.error);
      }
      assert.equal(idle.blocksUsed, 0);
      // Once the queue drained, requests are accepted again.
      await stillServes(baseURL);
      const { code } = await server.stop("SIGTERM");
      assert.equal(code, 0);
    } finally {
      server.child.kill("SIGKILL");
    }
  });
});
