// A model directory that is gone or damaged at start-up: uniattn-serve prints a message that names the
// problem and exits non-zero (no crash, no hang, never `ready`). Each case damages a copy of the default
// model in a temporary directory (unchanged files are symlinked).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";

import { serveBinary, sourceDir } from "../integration/lib/harness.mjs";
import { rng } from "./lib/clients.mjs";

const modelDir = resolve(sourceDir, "models/stories15M");
const files = ["config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"];
let root;

function headBytes(file, n) {
  const buf = Buffer.alloc(n);
  const fd = openSync(file, "r");
  try {
    readSync(fd, buf, 0, n, 0);
  } finally {
    closeSync(fd);
  }
  return buf;
}

function garbage(n, seed) {
  const r = rng(seed);
  return Buffer.from(Array.from({ length: n }, () => r.int(0, 255)));
}

// A copy of the model in which `damage` maps a file name to its new content (null = removed).
function damagedCopy(name, damage) {
  const dir = join(root, name);
  rmSync(dir, { recursive: true, force: true });
  spawnSync("mkdir", ["-p", dir]);
  for (const f of files) {
    if (!(f in damage)) symlinkSync(join(modelDir, f), join(dir, f));
    else if (damage[f] !== null) writeFileSync(join(dir, f), damage[f]);
  }
  return dir;
}

function serve(dir) {
  const r = spawnSync(serveBinary, ["--config", "config/default.yaml", "--port", "0", "--grpc-port", "0", "--model", dir], {
    cwd: sourceDir,
    encoding: "utf8",
    timeout: 30000,  // a server that came up anyway is killed: counted as a failure
    killSignal: "SIGKILL",
    env: { ...process.env, OMP_WAIT_POLICY: "PASSIVE" },
  });
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

before(() => {
  root = mkdtempSync(join(tmpdir(), "uniattn-model-"));
});

after(() => {
  rmSync(root, { recursive: true, force: true });
});

describe("a missing or corrupt model directory stops start-up with a clear error", () => {
  const safetensors = join(modelDir, "model.safetensors");
  const cases = () => {
    const size = readFileSync(join(modelDir, "config.json")).length;  // sanity: the model is there
    assert.ok(size > 0);
    const headerLen = Number(headBytes(safetensors, 8).readBigUInt64LE(0));
    return [
      ["a directory that disappeared", () => {
        const dir = damagedCopy("gone", {});
        rmSync(dir, { recursive: true, force: true });
        return dir;
      }, /gone/],
      ["an empty directory", () => damagedCopy("empty", Object.fromEntries(files.map((f) => [f, null]))), /config\.json/],
      ["config.json that is not JSON", () => damagedCopy("config-garbage", { "config.json": '{"vocab_size": 32000, "hidden_si' }), /config\.json/],
      ["config.json of random bytes", () => damagedCopy("config-bytes", { "config.json": garbage(512, 1) }), /config\.json/],
      ["config.json with an impossible shape", () => {
        const c = JSON.parse(readFileSync(join(modelDir, "config.json"), "utf8"));
        c.hidden_size = 290;  // not num_attention_heads * head_dim; the weights no longer fit either
        return damagedCopy("config-shape", { "config.json": JSON.stringify(c) });
      }, /hidden_size|shape|config/],
      ["model.safetensors missing", () => damagedCopy("no-weights", { "model.safetensors": null }), /safetensors/],
      ["model.safetensors cut inside its header", () => damagedCopy("cut-header", { "model.safetensors": headBytes(safetensors, 8 + Math.floor(headerLen / 2)) }), /safetensors/],
      ["model.safetensors cut in the middle of the weights", () => damagedCopy("cut-weights", { "model.safetensors": headBytes(safetensors, 8 + headerLen + 1000000) }), /safetensors/],
      ["model.safetensors of random bytes", () => damagedCopy("weights-bytes", { "model.safetensors": garbage(4096, 2) }), /safetensors/],
      ["tokenizer.model missing", () => damagedCopy("no-tokenizer", { "tokenizer.model": null }), /tokenizer\.model/],
      ["tokenizer.model of random bytes", () => damagedCopy("tokenizer-bytes", { "tokenizer.model": garbage(4096, 3) }), /tokenizer/],
    ];
  };

  it("every case: a message naming the problem, exit code 1, never ready", () => {
    const outcomes = [];
    for (const [what, make, names] of cases()) {
      const dir = make();
      const r = serve(dir);
      rmSync(dir, { recursive: true, force: true });
      const message = (r.stderr.match(/^uniattn-serve: .*$/m) ?? [""])[0];
      outcomes.push({ what, names, message, ...r });
      console.log(`model dir: ${what}: exit ${r.code}${r.signal ? ` signal ${r.signal}` : ""}: ${message}`);
    }
    for (const { what, names, message, code, signal, stdout, stderr } of outcomes) {
      assert.equal(signal, null, `${what}: killed by ${signal} (crash, or a hang past the timeout)\n${stderr}`);
      assert.equal(code, 1, `${what}: exit code ${code}\n${stderr}`);
      assert.doesNotMatch(stdout, /^ready/m, what);
      assert.match(message, names, `${what}: the message must name the problem\n${stderr}`);
    }
  });
});
