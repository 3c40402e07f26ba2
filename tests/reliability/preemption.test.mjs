// KV exhaustion: a pool far smaller than the concurrent requests need forces the scheduler to preempt
// running sequences and recompute them later. Every request still completes with exactly max_tokens tokens,
// greedy requests give the same text as when run alone, the preemption counter rises, and afterwards no
// block is owned.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { metric, startServer } from "../integration/lib/harness.mjs";
import { completion, countByKind, occupancy, stillServes, streamCompletion, waitIdle } from "./lib/clients.mjs";

const kBlockSize = 16;
const kPoolBlocks = 24;  // 384 tokens
const kRequests = 12;
const kMaxTokens = 120;  // prompt + 120 tokens = 8 blocks each: 96 blocks wanted at once, 24 held

describe("KV exhaustion", () => {
  it(`${kRequests} requests of ${kMaxTokens} tokens in a ${kPoolBlocks}-block pool: preemption, all complete, same greedy text`, async () => {
    // stories15M's KV bytes per token come from the running server; start once to size the pool exactly.
    const probe = await startServer(["--set", "server.grpc_port=-1"]);
    let bytesPerToken;
    try {
      bytesPerToken = metric((await occupancy(probe.baseURL)).samples, "uniattn:kv_bytes_per_token");
    } finally {
      probe.child.kill("SIGKILL");
    }
    const server = await startServer([
      "--set", `engine.kv_cache_bytes=${bytesPerToken * kBlockSize * kPoolBlocks}`,
      "--set", `engine.block_size=${kBlockSize}`,
      "--set", "engine.max_num_seqs=16",
      "--set", "engine.enable_prefix_caching=false",
    ]);
    const { baseURL } = server;
    try {
      const before = await occupancy(baseURL);
      assert.equal(before.blocksTotal, kPoolBlocks);
      const body = { prompt: "Once upon a time", max_tokens: kMaxTokens, ignore_eos: true, temperature: 0 };
      // The reference: one request alone, never preempted.
      const alone = await completion(baseURL, body);
      assert.equal(alone.kind, "ok");
      assert.equal(metric((await occupancy(baseURL)).samples, "uniattn:num_preemptions_total"), 0);

      const results = await Promise.all(
        Array.from({ length: kRequests }, (_, i) =>
          i % 2 ? completion(baseURL, body) : streamCompletion(baseURL, body).then((r) => ({ ...r, streamed: true })),
        ),
      );
      const idle = await waitIdle(baseURL);
      const s = idle.samples;
      const preemptions = metric(s, "uniattn:num_preemptions_total");
      console.log(`preemption: pool ${kPoolBlocks} blocks of ${kBlockSize} tokens (${bytesPerToken} bytes/token); ${kRequests} requests of ${kMaxTokens} tokens: ${JSON.stringify(countByKind(results))}, preemptions ${preemptions}`);
      console.log(`preemption: KV blocks in use after ${idle.blocksUsed} of ${idle.blocksTotal}, KV bytes ${idle.kvBytes}`);

      assert.deepEqual(countByKind(results), { ok: kRequests });
      for (const r of results) {
        assert.equal(r.usage.completion_tokens, kMaxTokens);
        assert.equal(r.finish, "length");
        if (r.streamed) assert.equal(r.tokens, kMaxTokens);
        else assert.equal(r.text[0], alone.text[0], "a preempted and recomputed greedy request gives the same text");
      }
      assert.ok(preemptions > 0, "the pool was too small for the batch: the scheduler must have preempted");
      assert.equal(metric(s, "uniattn:request_failure_total"), 0);
      assert.equal(idle.blocksUsed, 0);
      await stillServes(baseURL);
      const { code } = await server.stop("SIGTERM");
      assert.equal(code, 0);
    } finally {
      server.child.kill("SIGKILL");
    }
  });
});
