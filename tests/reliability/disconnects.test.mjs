// Clients that go away at random points (seeded): right after connecting, in the middle of the request
// headers, in the middle of the body, while waiting for a non-streamed answer, before the first token and
// in the middle of a stream. Well-behaved clients run alongside and must get complete answers; afterwards
// the server still serves and no KV block is owned.
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { metric, scrape, startServer } from "../integration/lib/harness.mjs";
import {
  countByKind,
  httpRequest,
  rawAndDrop,
  rng,
  stillServes,
  streamCompletion,
  waitIdle,
} from "./lib/clients.mjs";

const kWaves = 3;
const kDroppersPerWave = 96;
const kGoodPerWave = 32;
const kinds = ["connect_only", "mid_headers", "mid_body", "awaiting_answer", "before_first_token", "mid_stream"];

// One client that disconnects at the point its kind names; resolves with the kind.
async function dropper(port, kind, rand) {
  const body = JSON.stringify({ prompt: "Once upon a time", max_tokens: 200, ignore_eos: true, stream: kind !== "awaiting_answer" });
  const req = httpRequest("POST", "/v1/completions", body);
  const headerEnd = req.indexOf("\r\n\r\n") + 4;
  switch (kind) {
    case "connect_only":
      await rawAndDrop(port, "");
      break;
    case "mid_headers":
      await rawAndDrop(port, req.slice(0, rand.int(1, headerEnd - 2)));
      break;
    case "mid_body":
      await rawAndDrop(port, req.slice(0, rand.int(headerEnd, req.length - 1)));
      break;
    case "awaiting_answer": {
      // A non-streamed request: wait a random while (the answer takes far longer), then reset.
      const waitMs = rand.int(10, 400);
      await rawAndDrop(port, req, { until: () => false, timeoutMs: waitMs });
      break;
    }
    case "before_first_token":
      await rawAndDrop(port, req, { until: (d) => d.includes("\r\n\r\n") });
      break;
    case "mid_stream": {
      const events = rand.int(1, 8);
      await rawAndDrop(port, req, { until: (d) => (d.match(/data: \{/g) ?? []).length >= 1 + events });
      break;
    }
  }
  return kind;
}

describe("client disconnects", () => {
  it(`${kWaves} waves of ${kDroppersPerWave} clients going away at random points, ${kGoodPerWave} good clients each`, async () => {
    const server = await startServer(["--set", "engine.max_num_seqs=64", "--set", "engine.max_queued_requests=1024"]);
    const { baseURL, httpPort } = server;
    const rand = rng(20261127);
    try {
      const before = await scrape(baseURL);
      const dropped = {};
      const good = [];
      for (let w = 0; w < kWaves; ++w) {
        const wave = [];
        for (let i = 0; i < kDroppersPerWave; ++i) {
          const kind = kinds[i % kinds.length];
          dropped[kind] = (dropped[kind] ?? 0) + 1;
          wave.push(dropper(httpPort, kind, rand));
        }
        const goodWave = Array.from({ length: kGoodPerWave }, (_, i) =>
          streamCompletion(baseURL, { prompt: "Lily and Tom", max_tokens: 6 + (i % 5), ignore_eos: true }).then((r) => ({
            ...r,
            expected: 6 + (i % 5),
          })),
        );
        await Promise.all(wave);
        good.push(...(await Promise.all(goodWave)));
        const o = await waitIdle(baseURL, `wave ${w + 1}'s cancelled requests to free their blocks`);
        assert.equal(o.blocksUsed, 0);
        await stillServes(baseURL);
      }
      // The engine publishes its stats after the step in which the last request finished, so the client of
      // stillServes() can see its answer a moment before the metrics do: wait for idle, do not sample once.
      const after = await waitIdle(baseURL);
      const s = after.samples;
      const delta = (name, labels) => metric(s, name, labels) - metric(before, name, labels);
      const aborts = delta("uniattn:request_success_total", { finished_reason: "abort" });
      const disconnects = delta("uniattn:client_disconnects_total");
      const tokens = delta("uniattn:generation_tokens_total");
      const engineBound = dropped.awaiting_answer + dropped.before_first_token + dropped.mid_stream;
      console.log(`disconnects: ${kWaves * kDroppersPerWave} dropped clients ${JSON.stringify(dropped)}; ${good.length} good clients ${JSON.stringify(countByKind(good))}`);
      console.log(`disconnects: aborted in the engine ${aborts}, client_disconnects_total +${disconnects}, generation tokens ${tokens} (at most ${engineBound * 200} had nothing been cancelled)`);
      console.log(`disconnects: KV blocks in use after ${after.blocksUsed} of ${after.blocksTotal}, KV bytes ${after.kvBytes}, running ${after.running}, waiting ${after.waiting}`);

      assert.deepEqual(countByKind(good), { ok: good.length });
      for (const r of good) assert.equal(r.usage.completion_tokens, r.expected);
      // Every client that got a stream started and then went away was cancelled; none of the dropped requests
      // ran to its 200 tokens (each good request is counted as stop/length, not abort).
      assert.ok(aborts >= dropped.mid_stream, `aborts ${aborts} < mid-stream drops ${dropped.mid_stream}`);
      assert.ok(aborts <= engineBound, `aborts ${aborts} > requests that reached the engine ${engineBound}`);
      assert.ok(disconnects >= dropped.mid_stream);
      assert.equal(delta("uniattn:request_success_total", { finished_reason: "length" }), good.length + kWaves);
      assert.equal(metric(s, "uniattn:request_failure_total"), 0);
      assert.equal(after.blocksUsed, 0);
      assert.equal(after.kvBytes, 0);
      assert.equal(server.child.exitCode, null, "the server is still running");
      const { code } = await server.stop("SIGTERM");
      assert.equal(code, 0);
    } finally {
      server.child.kill("SIGKILL");
    }
  });
});
