// The checked-in fuzz corpora of the two server-side targets (tests/fuzz/corpus/fuzz_http_request and
// fuzz_openai_request, every regress-* input included) replayed against the real uniattn-serve over
// loopback: what the fuzzers check in-process, checked once more through the real sockets, tokenizer and
// engine. Every input gets answers with valid statuses (no 5xx) or a close, and afterwards the process is
// alive, serves, holds no KV block and exits 0 on SIGTERM.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { connect } from "node:net";
import { join, resolve } from "node:path";
import { describe, it } from "node:test";

import { sourceDir, startServer } from "../integration/lib/harness.mjs";
import { httpRequest, stillServes, waitIdle } from "./lib/clients.mjs";

const kConcurrency = 8;
const kPerInputMs = 3000;  // then the connection is reset (cancelling whatever still runs)

function corpus(target) {
  const dir = resolve(sourceDir, "tests/fuzz/corpus", target);
  return readdirSync(dir)
    .sort()
    .map((name) => ({ name: `${target}/${name}`, data: readFileSync(join(dir, name)) }));
}

// fuzz_openai_request's byte 0 picks the endpoint (see tests/fuzz/openai_request_fuzz.cc); the rest is the body.
function openAiInputToHttp(data) {
  const sel = data[0];
  const path = sel >> 7 ? (sel & 1 ? "/detokenize" : "/tokenize") : sel & 1 ? "/v1/chat/completions" : "/v1/completions";
  const body = data.subarray(1);
  return Buffer.concat([Buffer.from(httpRequest("POST", path, "").replace(/Content-Length: 0/, `Content-Length: ${body.length}`)), body]);
}

// Sends `bytes`, half-closes (as the fuzz target's stream does), collects until the server closes or the
// time is up, then resets. Resolves with the final status codes seen.
function replay(port, bytes) {
  return new Promise((resolveReplay) => {
    const socket = connect(port, "127.0.0.1");
    const chunks = [];
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      socket.resetAndDestroy();
      const text = Buffer.concat(chunks).toString("latin1");
      resolveReplay([...text.matchAll(/HTTP\/1\.[01] (\d{3}) /g)].map((m) => Number(m[1])).filter((s) => s >= 200));
    };
    const timer = setTimeout(finish, kPerInputMs);
    socket.on("data", (d) => chunks.push(d));
    socket.on("error", finish);
    socket.on("close", finish);
    socket.on("connect", () => socket.end(bytes));
  });
}

describe("fuzz corpora against the real server", () => {
  it("every checked-in input: valid answers or a close; the server survives and serves", async () => {
    const inputs = [
      ...corpus("fuzz_http_request").map((c) => ({ ...c, bytes: c.data.subarray(1) })),
      ...corpus("fuzz_openai_request").map((c) => ({ ...c, bytes: openAiInputToHttp(c.data) })),
    ];
    assert.ok(inputs.some((c) => c.name.includes("regress-")), "the regression inputs are replayed");
    const server = await startServer(["--set", "server.max_body_bytes=16KiB"]);
    try {
      const statuses = {};
      let next = 0;
      const worker = async () => {
        while (next < inputs.length) {
          const input = inputs[next++];
          const got = await replay(server.httpPort, input.bytes);
          for (const s of got) {
            statuses[s] = (statuses[s] ?? 0) + 1;
            assert.ok(s < 500, `${input.name}: status ${s}`);
          }
          assert.equal(server.child.exitCode, null, `the server died on ${input.name}:\n${server.stderr()}`);
        }
      };
      await Promise.all(Array.from({ length: kConcurrency }, worker));
      const idle = await waitIdle(server.baseURL);
      console.log(`fuzz replay: ${inputs.length} inputs; final statuses ${JSON.stringify(statuses)}; KV blocks in use after ${idle.blocksUsed}`);
      assert.equal(idle.blocksUsed, 0);
      await stillServes(server.baseURL);
      const { code, signal } = await server.stop("SIGTERM");
      assert.equal(signal, null);
      assert.equal(code, 0);
    } finally {
      server.child.kill("SIGKILL");
    }
  });
});
