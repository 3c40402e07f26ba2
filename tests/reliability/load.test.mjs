// Load: 256 concurrent streaming clients against the real uniattn-serve and the default model, for a bounded
// number of requests and a bounded time, in three rounds. Afterwards every request has completed with the
// right number of tokens (or failed cleanly, counted by kind) and no KV block is owned. Resident memory is
// taken after the first round (which sizes the step buffers for full batches and the allocator's arenas for
// 256 connections) and must be back near that baseline after the other two. Prints the figures
// docs/reliability.md records.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { metric, startServer } from "../integration/lib/harness.mjs";
import { countByKind, mib, occupancy, rssBytes, stillServes, streamCompletion, waitIdle } from "./lib/clients.mjs";

const kClients = 256;
const kRounds = 3;
const kRequestsPerClient = 1;  // per round
const kRoundDeadlineMs = 15000;  // no client starts a new request after this (the count bound usually ends first)
// Resident memory may grow with the peak batch and the number of connections, but not per request: after
// the first round it must stay within this (generous) bound. Measured: under 5 MiB over seven more rounds.
const kRssGrowthBound = 48 << 20;

const prompts = ["Once upon a time", "The little dog", "Lily and Tom went to the park", "One day, a bird", "Tim had a red ball"];

// One round: every client sends up to kRequestsPerClient streaming requests back to back.
async function round(baseURL, roundIdx) {
  const deadline = Date.now() + kRoundDeadlineMs;
  const results = [];
  let open = 0;
  let peakOpen = 0;
  const client = async (c) => {
    for (let k = 0; k < kRequestsPerClient && Date.now() < deadline; ++k) {
      const maxTokens = 2 + ((c + k + roundIdx) % 7);  // 2..8
      const body = { prompt: prompts[(c + k) % prompts.length], max_tokens: maxTokens, ignore_eos: true, temperature: 0.8, seed: c };
      peakOpen = Math.max(peakOpen, ++open);
      const r = await streamCompletion(baseURL, body);
      --open;
      r.expected = maxTokens;
      results.push(r);
    }
  };
  // Sample the engine's occupancy while the round runs (for the report, not asserted: it depends on speed).
  let peakInEngine = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const o = await occupancy(baseURL).catch(() => null);
      if (o) peakInEngine = Math.max(peakInEngine, o.running + o.waiting);
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  const t0 = Date.now();
  await Promise.all(Array.from({ length: kClients }, (_, c) => client(c)));
  const wallMs = Date.now() - t0;
  sampling = false;
  await sampler;
  return { results, peakOpen, peakInEngine, wallMs };
}

describe("load", () => {
  it(`${kClients} concurrent streaming clients: all complete, KV blocks back to zero, RSS back near baseline`, async () => {
    const server = await startServer([
      "--set", "engine.max_num_seqs=128",
      "--set", "engine.max_num_batched_tokens=1024",
      "--set", "engine.max_queued_requests=1024",
    ]);
    const { baseURL } = server;
    const pid = server.child.pid;
    try {
      const rssCold = rssBytes(pid);
      const before = (await occupancy(baseURL)).samples;
      const figures = [];
      const all = [];
      let rssBaseline = 0;
      let rssPeak = rssCold;
      for (let roundIdx = 0; roundIdx < kRounds; ++roundIdx) {
        let sampleRss = true;
        const rssSampler = (async () => {
          while (sampleRss) {
            rssPeak = Math.max(rssPeak, rssBytes(pid));
            await new Promise((r) => setTimeout(r, 100));
          }
        })();
        const r = await round(baseURL, roundIdx);
        sampleRss = false;
        await rssSampler;
        const idle = await waitIdle(baseURL);
        const rss = rssBytes(pid);
        if (roundIdx === 0) rssBaseline = rss;
        figures.push({ round: roundIdx + 1, requests: r.results.length, byKind: countByKind(r.results), peakOpen: r.peakOpen,
          peakInEngine: r.peakInEngine, wallMs: r.wallMs, blocksUsed: idle.blocksUsed, kvBytes: idle.kvBytes, rssMiB: mib(rss) });
        all.push(...r.results);
        assert.equal(r.peakOpen, kClients, "every client had a stream open at once");
        assert.equal(idle.blocksUsed, 0);
      }
      const after = await occupancy(baseURL);
      const rssAfter = rssBytes(pid);
      const tokens = metric(after.samples, "uniattn:generation_tokens_total") - metric(before, "uniattn:generation_tokens_total");
      console.log(`load: ${kClients} clients, ${all.length} streaming requests, by kind ${JSON.stringify(countByKind(all))}`);
      for (const f of figures) console.log(`load: round ${JSON.stringify(f)}`);
      console.log(`load: generation tokens ${tokens}; KV blocks in use after ${after.blocksUsed} of ${after.blocksTotal}, KV bytes in use ${after.kvBytes}`);
      console.log(`load: RSS at start ${mib(rssCold)} MiB, after round 1 (baseline) ${mib(rssBaseline)} MiB, peak ${mib(rssPeak)} MiB, after round ${kRounds} ${mib(rssAfter)} MiB (growth over the baseline ${mib(rssAfter - rssBaseline)} MiB)`);

      // Every request completed with exactly the tokens it asked for.
      // At least one request per client and round (the time bound may cut a round short on a slow machine).
      assert.ok(all.length >= kRounds * kClients);
      assert.deepEqual(countByKind(all), { ok: all.length }, "no failures at this load");
      for (const r of all) {
        assert.equal(r.usage.completion_tokens, r.expected);
        assert.equal(r.tokens, r.expected);
        assert.equal(r.finish, "length");
      }
      assert.equal(tokens, all.reduce((s, r) => s + r.expected, 0), "the engine generated exactly what was asked");
      assert.equal(metric(after.samples, "uniattn:request_failure_total"), 0);
      // Nothing leaked: no block owned, no KV byte held, memory back near the baseline.
      assert.equal(after.blocksUsed, 0);
      assert.equal(after.kvBytes, 0);
      assert.ok(rssAfter - rssBaseline < kRssGrowthBound, `RSS grew by ${mib(rssAfter - rssBaseline)} MiB`);
      await stillServes(baseURL);
      const { code } = await server.stop("SIGTERM");
      assert.equal(code, 0);
    } finally {
      server.child.kill("SIGKILL");
    }
  });
});
