// Starts the real uniattn-serve (config/default.yaml, ports 0) and reads the ports it prints.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const sourceDir = process.env.UNIATTN_SOURCE_DIR ?? resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const serveBinary = process.env.UNIATTN_SERVE ?? resolve(sourceDir, "build/bin/uniattn-serve");

// Starts a server; resolves once it printed `ready`. `args` are extra flags (e.g. --set key=value).
export async function startServer(args = [], { timeoutMs = 120000 } = {}) {
  const child = spawn(
    serveBinary,
    ["--config", "config/default.yaml", "--port", "0", "--grpc-port", "0", "--set", "logging.level=warn", ...args],
    { cwd: sourceDir, stdio: ["ignore", "pipe", "pipe"] },
  );
  let stdout = "";
  let stderr = "";
  child.stderr.on("data", (d) => {
    stderr += d;
  });
  const exited = new Promise((resolveExit) => child.on("exit", (code, signal) => resolveExit({ code, signal })));
  const info = await new Promise((resolveReady, reject) => {
    const timer = setTimeout(() => {
      // Never leave a server behind (it would keep the test process, and ctest, waiting).
      child.kill("SIGKILL");
      reject(new Error(`uniattn-serve not ready after ${timeoutMs} ms:\n${stderr}`));
    }, timeoutMs);
    const result = {};
    child.stdout.on("data", (d) => {
      stdout += d;
      const listening = stdout.match(/^listening http=(\S+):(\d+) grpc=(\S+):(\d+)$/m);
      if (listening) {
        result.httpPort = Number(listening[2]);
        result.grpcAddress = `${listening[3]}:${listening[4]}`;
      }
      const ready = stdout.match(/^ready model=(\S+)/m);
      if (ready && listening) {
        result.model = ready[1];
        clearTimeout(timer);
        resolveReady(result);
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`uniattn-serve exited early (code ${code}, signal ${signal}):\n${stderr}`));
    });
  });
  const server = {
    ...info,
    child,
    exited,
    baseURL: `http://127.0.0.1:${info.httpPort}`,
    stderr: () => stderr,
    async stop(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
  return server;
}

export async function getJson(url, init) {
  const res = await fetch(url, init);
  return { status: res.status, body: await res.json() };
}

// Parses Prometheus text: {"name{labels}": value}.
export async function scrape(baseURL) {
  const text = await (await fetch(`${baseURL}/metrics`)).text();
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return out;
}

// The value of `name` whose labels include every `labels` pair (model_name is implied).
export function metric(samples, name, labels = {}) {
  for (const [key, value] of Object.entries(samples)) {
    const brace = key.indexOf("{");
    const n = brace < 0 ? key : key.slice(0, brace);
    if (n !== name) continue;
    const ok = Object.entries(labels).every(([k, v]) => key.includes(`${k}="${v}"`));
    if (ok) return value;
  }
  return undefined;
}

export async function waitFor(predicate, { timeoutMs = 20000, intervalMs = 50, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await predicate();
    if (last) return last;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`timed out waiting for ${what}`);
}

export async function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}
