// Start-up validation: a bad key, type or value stops uniattn-serve with a message naming the key.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";

import { serveBinary, sourceDir } from "./lib/harness.mjs";

function run(args) {
  const r = spawnSync(serveBinary, args, { cwd: sourceDir, encoding: "utf8", timeout: 60000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe("configuration errors stop start-up", () => {
  for (const [set, key] of [
    ["engine.blok_size=16", "engine.blok_size"],
    ["engine.max_num_seqs=lots", "engine.max_num_seqs"],
    ["engine.kv_cache_memory_fraction=2", "engine.kv_cache_memory_fraction"],
    ["server.http_port=70000", "server.http_port"],
    ["model.chat_template=jinja", "model.chat_template"],
  ]) {
    it(`--set ${set}`, () => {
      const r = run(["--config", "config/default.yaml", "--set", set]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, new RegExp(key.replace(".", "\\.")));
    });
  }

  it("a bad file names the key", () => {
    const dir = mkdtempSync(join(tmpdir(), "uniattn-cfg-"));
    try {
      const file = join(dir, "bad.yaml");
      writeFileSync(file, "model:\n  path: models/stories15M\nserver:\n  api_keys: not-a-list\n");
      const r = run(["--config", file]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /server\.api_keys: expected a list/);
      writeFileSync(file, "model: {path: [unclosed\n");
      assert.equal(run(["--config", file]).code, 2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a missing model directory is an error, not a hang", () => {
    const r = run(["--config", "config/default.yaml", "--port", "0", "--grpc-port", "0", "--model", "/nonexistent/model"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /nonexistent/);
  });

  it("--print-config shows the effective configuration with overrides, keys redacted", () => {
    const r = run(["--config", "config/default.yaml", "--port", "9999", "--set", "server.api_keys=[secret]", "--print-config"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /http_port: 9999/);
    assert.doesNotMatch(r.stdout, /secret/);
  });
});
