// Clients for the reliability suite: streaming and non-streaming completions that classify every outcome
// instead of throwing, raw sockets that go away at chosen points, a seeded RNG, and the server-side figures
// the suite checks (KV blocks in use from /metrics, resident memory from /proc).
import { readFileSync } from "node:fs";
import { connect } from "node:net";

import { metric, scrape, waitFor } from "../../integration/lib/harness.mjs";

// mulberry32: a small seeded generator, so every run disconnects at the same points.
export function rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  next.int = (lo, hi) => lo + Math.floor(next() * (hi - lo + 1));  // inclusive
  next.pick = (xs) => xs[Math.floor(next() * xs.length)];
  return next;
}

// Resident memory of a process in bytes (VmRSS).
export function rssBytes(pid) {
  const m = readFileSync(`/proc/${pid}/status`, "utf8").match(/^VmRSS:\s+(\d+)\s+kB$/m);
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

export const mib = (bytes) => (bytes / (1 << 20)).toFixed(1);

// A streamed completion read to its end. Never throws: returns
//   {kind: "ok", tokens, finish, usage}                 200, events, a usage chunk, [DONE]
//   {kind: "http_<status>", status, error}              an error status before the stream (OpenAI shape)
//   {kind: "stream_error", error}                       a `data: {"error": ...}` event
//   {kind: "truncated"}                                 the stream ended without [DONE]
//   {kind: "network", message}                          fetch failed (connection refused or reset)
// `onHeaders(status)` is called when the response headers arrive (a 200 means the engine accepted the request).
export async function streamCompletion(baseURL, body, { onToken, onHeaders } = {}) {
  let r;
  try {
    r = await fetch(`${baseURL}/v1/completions`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    });
  } catch (e) {
    return { kind: "network", message: String(e.cause?.code ?? e.message) };
  }
  if (onHeaders) onHeaders(r.status);
  if (r.status !== 200) {
    const text = await r.text();
    let error;
    try {
      error = JSON.parse(text).error;
    } catch {
      error = { unparsed: text.slice(0, 200) };
    }
    return { kind: `http_${r.status}`, status: r.status, error };
  }
  const decoder = new TextDecoder();
  let buffer = "";
  let tokens = 0;
  let finish;
  let usage;
  let done = false;
  let error;
  try {
    for await (const bytes of r.body) {
      buffer += decoder.decode(bytes, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!event.startsWith("data: ")) continue;  // `: ping` comments
        const payload = event.slice(6);
        if (payload === "[DONE]") {
          done = true;
          continue;
        }
        const chunk = JSON.parse(payload);
        if (chunk.error) error = chunk.error;
        if (chunk.usage) usage = chunk.usage;
        for (const c of chunk.choices ?? []) {
          // One event per generated token; the finish reason comes in an event of its own.
          if (c.finish_reason) {
            finish = c.finish_reason;
            continue;
          }
          ++tokens;
          if (onToken) onToken(tokens);
        }
      }
    }
  } catch (e) {
    return { kind: "network", message: String(e.cause?.code ?? e.message), tokens };
  }
  if (error) return { kind: "stream_error", error, tokens };
  if (!done) return { kind: "truncated", tokens };
  return { kind: "ok", tokens, finish, usage };
}

// A non-streamed completion; same classification as streamCompletion.
export async function completion(baseURL, body) {
  let r;
  try {
    r = await fetch(`${baseURL}/v1/completions`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (e) {
    return { kind: "network", message: String(e.cause?.code ?? e.message) };
  }
  const text = await r.text().catch(() => null);
  if (text === null) return { kind: "network", message: "body cut" };
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    return { kind: `http_${r.status}`, status: r.status, error: { unparsed: text.slice(0, 200) } };
  }
  if (r.status !== 200) return { kind: `http_${r.status}`, status: r.status, error: json.error };
  return {
    kind: "ok",
    tokens: json.usage.completion_tokens,
    finish: json.choices[0].finish_reason,
    usage: json.usage,
    text: json.choices.map((c) => c.text),
  };
}

// {kind: count}, sorted by kind.
export function countByKind(results) {
  const out = {};
  for (const r of results) out[r.kind] = (out[r.kind] ?? 0) + 1;
  return Object.fromEntries(Object.entries(out).sort());
}

export const httpRequest = (method, path, body = "") =>
  `${method} ${path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;

// Opens a connection, writes `bytes`, then destroys the socket (a reset, as a killed client does) once
// `until(received)` holds, or right after writing when `until` is null. Resolves with what was received.
export function rawAndDrop(port, bytes, { until = null, timeoutMs = 30000 } = {}) {
  return new Promise((resolveRaw) => {
    const socket = connect(port, "127.0.0.1");
    let data = "";
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      socket.resetAndDestroy();
      resolveRaw(data);
    };
    const timer = setTimeout(finish, timeoutMs);
    socket.on("data", (d) => {
      data += d;
      if (until && until(data)) finish();
    });
    socket.on("error", finish);
    socket.on("close", finish);
    socket.on("connect", () => {
      if (bytes.length) socket.write(bytes);
      if (!until) setImmediate(finish);
    });
  });
}

// The engine's occupancy from /metrics.
export async function occupancy(baseURL) {
  const s = await scrape(baseURL);
  return {
    samples: s,
    running: metric(s, "uniattn:num_requests_running"),
    waiting: metric(s, "uniattn:num_requests_waiting"),
    blocksUsed: metric(s, "uniattn:kv_cache_blocks_used"),
    blocksTotal: metric(s, "uniattn:kv_cache_blocks_total"),
    kvBytes: metric(s, "uniattn:kv_cache_bytes"),
  };
}

// Waits until nothing runs or waits and no KV block is owned; returns the occupancy then.
export async function waitIdle(baseURL, what = "the engine to go idle (blocks back to zero)") {
  return waitFor(
    async () => {
      const o = await occupancy(baseURL);
      return o.running === 0 && o.waiting === 0 && o.blocksUsed === 0 && o.kvBytes === 0 && o;
    },
    { timeoutMs: 30000, intervalMs: 100, what },
  );
}

// Asserts the server still answers a small greedy completion with the right number of tokens.
export async function stillServes(baseURL) {
  const r = await completion(baseURL, { prompt: "Once", max_tokens: 3, ignore_eos: true, temperature: 0 });
  if (r.kind !== "ok" || r.tokens !== 3) throw new Error(`the server no longer serves: ${JSON.stringify(r)}`);
}
