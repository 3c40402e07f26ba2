// Probe (issue 15, docs/reliability.md "Big prompts"): what megabyte prompts cost the real uniattn-serve.
// Not a test: it measures and prints a table (timings depend on the machine). Run after scripts/setup.sh:
//   node tests/reliability/probe_big_prompts.mjs [--mb 7] [--pairs 3]
// For each endpoint (completions, chat, /tokenize, gRPC Generate) it sends two requests of
// MB megabytes at once, `pairs` times, while another client polls /health every 20 ms (over a connection
// opened before); it reports the answers, /health's latency (p50, p99, max) and the server's RSS (VmRSS)
// before, at the peak and 10 s after the last pair.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

import { sourceDir, startServer } from "../integration/lib/harness.mjs";

// The gRPC client of the integration tests (tests/integration/node_modules, installed by scripts/setup.sh).
const require = createRequire(resolve(sourceDir, "tests/integration/package.json"));
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const uniattn = grpc.loadPackageDefinition(
  protoLoader.loadSync(resolve(sourceDir, "proto/uniattn/v1/uniattn.proto"), {
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [resolve(sourceDir, "proto")],
  }),
).uniattn.v1;

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const mb = arg("mb", 7);
const pairs = arg("pairs", 3);

const rssMiB = (pid) => {
  const m = readFileSync(`/proc/${pid}/status`, "utf8").match(/^VmRSS:\s+(\d+) kB/m);
  return m ? Number(m[1]) / 1024 : NaN;
};

const words = "Once upon a time there was a little girl named Lily who loved the sun. ";
const text = words.repeat(Math.ceil((mb * 1024 * 1024) / words.length)).slice(0, mb * 1024 * 1024);
const bodies = {
  completions: ["/v1/completions", JSON.stringify({ prompt: text, max_tokens: 1 })],
  chat: ["/v1/chat/completions", JSON.stringify({ messages: [{ role: "user", content: text }], max_tokens: 1 })],
  tokenize: ["/tokenize", JSON.stringify({ prompt: text })],
};

// Polls /health every 20 ms over one kept-alive connection until its stdin closes; prints the latencies.
const POLLER = `
const base = process.argv[1];
const lat = [];
let stop = false;
process.stdin.on("end", () => (stop = true));
process.stdin.resume();
await (await fetch(base + "/health")).text();
while (!stop) {
  const t0 = performance.now();
  await (await fetch(base + "/health")).text();
  lat.push(performance.now() - t0);
  await new Promise((r) => setTimeout(r, 20));
}
process.stdout.write(JSON.stringify(lat));
`;

const server = await startServer(["--set", "server.max_body_bytes=16MiB"]);
const pid = server.child.pid;
const client = new uniattn.UniAttn(server.grpcAddress, grpc.credentials.createInsecure(), {
  "grpc.max_send_message_length": 16 << 20,
});
bodies.grpc = ["grpc", null];
const generate = async () => {
  const t0 = performance.now();
  const status = await new Promise((res) => {
    const call = client.Generate({ text, max_tokens: 1 });
    call.on("data", () => {});
    call.on("error", (e) => res(`${grpc.status[e.code]}`));
    call.on("end", () => res("OK"));
  });
  return { status, ms: performance.now() - t0, json: {} };
};
const post = async (path, body) => {
  const t0 = performance.now();
  const res = await fetch(`${server.baseURL}${path}`, { method: "POST", headers: { "Content-Type": "application/json" }, body });
  const json = await res.json();
  return { status: res.status, ms: performance.now() - t0, json };
};

console.log(`uniattn-serve pid ${pid}, prompts of ${mb} MiB, ${pairs} pair(s) per endpoint`);
console.log(
  "| endpoint | answers | request time (ms) | /health polls | /health p50 / p99 / max (ms) | RSS before (MiB) | RSS peak (MiB) | RSS 10 s after (MiB) |",
);
console.log("|---|---|---|---|---|---|---|---|");
for (const [name, [path, body]] of Object.entries(bodies)) {
  await sleep(1000);
  const before = rssMiB(pid);
  let peak = before;
  // /health is polled from another process: this one's event loop is busy sending megabytes and parsing
  // the answers, which would otherwise be counted as the server's latency.
  const poller = spawn(process.execPath, ["--input-type=module", "-e", POLLER, server.baseURL], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  let pollerOut = "";
  poller.stdout.on("data", (d) => (pollerOut += d));
  const pollerDone = new Promise((res) => poller.on("exit", res));
  await sleep(500);
  let polling = true;
  const rssWatch = (async () => {
    while (polling) {
      peak = Math.max(peak, rssMiB(pid));
      await sleep(20);
    }
  })();
  const answers = [];
  const times = [];
  for (let p = 0; p < pairs; ++p) {
    const one = () => (name === "grpc" ? generate() : post(path, body));
    const results = await Promise.all([one(), one()]);
    for (const r of results) {
      answers.push(typeof r.status === "string" ? r.status : r.status === 200 ? (r.json.count !== undefined ? `200 (${r.json.count} tokens)` : "200") : `${r.status} ${r.json.error?.code ?? ""}`);
      times.push(r.ms.toFixed(0));
    }
  }
  await sleep(10000);
  polling = false;
  await rssWatch;
  poller.stdin.end();
  await pollerDone;
  const health = JSON.parse(pollerOut);
  const after = rssMiB(pid);
  const unique = [...new Set(answers)].join(", ");
  health.sort((a, b) => a - b);
  const q = (f) => health[Math.min(health.length - 1, Math.floor(f * health.length))].toFixed(1);
  console.log(
    `| ${name} | ${unique} | ${times.join(" / ")} | ${health.length} | ${q(0.5)} / ${q(0.99)} / ${health.at(-1).toFixed(1)} | ${before.toFixed(0)} | ${peak.toFixed(0)} | ${after.toFixed(0)} |`,
  );
}
client.close();
const { code } = await server.stop();
console.log(`server exit code ${code}`);
