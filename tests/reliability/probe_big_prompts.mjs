// Probe (issue 15, docs/reliability.md "Big prompts"): what megabyte prompts cost the real uniattn-serve.
// Not a test: it measures and prints a table (timings depend on the machine). Run after scripts/setup.sh:
//   node tests/reliability/probe_big_prompts.mjs [--mb 7] [--pairs 3]
// For each endpoint (completions, chat, /tokenize, gRPC is left to grpc.test.mjs) it sends two requests of
// MB megabytes at once, `pairs` times, while another client polls /health every 20 ms; it reports the
// answers, the slowest /health, and the server's RSS (VmRSS) before, at the peak and 10 s after the last pair.
import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";

import { startServer } from "../integration/lib/harness.mjs";

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

const server = await startServer(["--set", "server.max_body_bytes=16MiB"]);
const pid = server.child.pid;
const post = async (path, body) => {
  const t0 = performance.now();
  const res = await fetch(`${server.baseURL}${path}`, { method: "POST", headers: { "Content-Type": "application/json" }, body });
  const json = await res.json();
  return { status: res.status, ms: performance.now() - t0, json };
};

console.log(`uniattn-serve pid ${pid}, prompts of ${mb} MiB, ${pairs} pair(s) per endpoint`);
console.log("| endpoint | answers | request time (ms) | slowest /health (ms) | RSS before (MiB) | RSS peak (MiB) | RSS 10 s after (MiB) |");
console.log("|---|---|---|---|---|---|---|");
for (const [name, [path, body]] of Object.entries(bodies)) {
  await sleep(1000);
  const before = rssMiB(pid);
  let peak = before;
  let slowest = 0;
  let polling = true;
  const poller = (async () => {
    while (polling) {
      const t0 = performance.now();
      await (await fetch(`${server.baseURL}/health`)).text();
      slowest = Math.max(slowest, performance.now() - t0);
      peak = Math.max(peak, rssMiB(pid));
      await sleep(20);
    }
  })();
  const answers = [];
  const times = [];
  for (let p = 0; p < pairs; ++p) {
    const results = await Promise.all([post(path, body), post(path, body)]);
    for (const r of results) {
      answers.push(r.status === 200 ? (r.json.count !== undefined ? `200 (${r.json.count} tokens)` : "200") : `${r.status} ${r.json.error?.code ?? ""}`);
      times.push(r.ms.toFixed(0));
    }
  }
  await sleep(10000);
  polling = false;
  await poller;
  const after = rssMiB(pid);
  const unique = [...new Set(answers)].join(", ");
  console.log(
    `| ${name} | ${unique} | ${times.join(" / ")} | ${slowest.toFixed(1)} | ${before.toFixed(0)} | ${peak.toFixed(0)} | ${after.toFixed(0)} |`,
  );
}
const { code } = await server.stop();
console.log(`server exit code ${code}`);
