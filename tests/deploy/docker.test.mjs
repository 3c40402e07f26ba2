// docker/: the Dockerfiles pass two linters (dockerfile-utils' validator, the Docker language service's,
// and dockerfilelint) plus the hadolint rules that matter here, re-implemented on dockerfile-ast; they
// agree with the manifests and the server's config (ports, user, paths); the build context (.dockerignore)
// holds what the build needs; and the script their builder stages run stages a working runtime tree from
// the CI build. No Docker engine runs here: nothing builds an image.
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRequire } from "node:module";
import { DockerfileParser } from "dockerfile-ast";
import * as dockerfileUtils from "dockerfile-utils";
import dockerignore from "@balena/dockerignore";
import { ROOT, readText, readYaml, kustomize, find, serverContainer, serverBinary } from "./lib.mjs";

const require = createRequire(import.meta.url);
const dockerfilelint = require("dockerfilelint");

const FLAVORS = { cpu: { overlay: "cpu" }, cuda: { overlay: "gpu" } };

// Lints a Dockerfile's text; returns a list of problems (empty: clean).
export function lint(text) {
  const problems = [];
  for (const d of dockerfileUtils.validate(text, {})) {
    problems.push(`dockerfile-utils line ${d.range.start.line + 1}: ${d.message}`);
  }
  for (const r of dockerfilelint.run(join(ROOT, "docker"), text)) {
    problems.push(`dockerfilelint line ${r.line}: ${r.title} (${r.category})`);
  }
  const df = DockerfileParser.parse(text);
  const ignored = new Set(df.getComments().flatMap((c) => /hadolint ignore=(\S+)/.exec(c.getContent())?.[1].split(",") ?? []));
  const rule = (id, ok, msg) => {
    if (!ok && !ignored.has(id)) problems.push(`${id}: ${msg}`);
  };
  const froms = df.getFROMs();
  const stages = froms.map((f) => f.getBuildStage()).filter(Boolean);
  for (const f of froms) {
    const image = f.getImageName();
    const tag = f.getImageTag();
    if (stages.includes(image)) continue;
    const expanded = f.getArgumentsContent() && f.getExpandedArguments?.()[0]?.getValue();
    rule("DL3006", Boolean(tag), `FROM ${image} has no tag`);
    rule("DL3007", !/:latest$/.test(expanded ?? ""), `FROM ${expanded} uses latest`);
  }
  const instructions = df.getInstructions();
  const final = froms.at(-1).getRange().start.line;
  const inFinal = instructions.filter((i) => i.getRange().start.line > final);
  const users = inFinal.filter((i) => i.getKeyword() === "USER");
  const lastUser = users.at(-1)?.getArgumentsContent() ?? "root";
  rule("DL3002", !/^(root|0)(:|$)/.test(lastUser), `the final stage runs as ${lastUser}`);
  rule("DL3020", !instructions.some((i) => i.getKeyword() === "ADD"), "ADD instead of COPY");
  let shellHasPipefail = false;
  for (const i of instructions) {
    const kw = i.getKeyword();
    const args = i.getArgumentsContent() ?? "";
    const line = i.getRange().start.line + 1;
    if (kw === "FROM") shellHasPipefail = false;
    if (kw === "SHELL") shellHasPipefail = /pipefail/.test(args);
    if (kw === "CMD" || kw === "ENTRYPOINT") rule("DL3025", args.trim().startsWith("["), `line ${line}: ${kw} is not JSON`);
    if (kw === "WORKDIR") rule("DL3000", args.startsWith("/"), `line ${line}: WORKDIR ${args} is relative`);
    if (kw === "RUN") {
      rule("DL4006", !/[^|]\|[^|]/.test(args) || shellHasPipefail, `line ${line}: a pipe without SHELL -o pipefail`);
      rule("DL3027", !/(^|[\s;&|])apt\s/.test(args), `line ${line}: apt instead of apt-get`);
      if (/apt-get\s+(-\S+\s+)*install/.test(args)) {
        rule("DL3015", /--no-install-recommends/.test(args), `line ${line}: apt-get install without --no-install-recommends`);
        rule("DL3014", /\s-y\b|--yes|--assume-yes/.test(args), `line ${line}: apt-get install without -y`);
        rule("DL3009", /rm -rf \/var\/lib\/apt\/lists/.test(args), `line ${line}: apt lists not removed`);
      }
      rule("DL3004", !/(^|[\s;&|])sudo\s/.test(args), `line ${line}: sudo`);
      rule("DL3003", !/(^|[\s;&|])cd\s/.test(args), `line ${line}: cd in RUN (use WORKDIR)`);
    }
  }
  rule("DL3057", inFinal.some((i) => i.getKeyword() === "HEALTHCHECK"), "no HEALTHCHECK in the final stage");
  return problems;
}

function dockerfile(flavor) {
  const text = readText(`docker/Dockerfile.${flavor}`);
  const df = DockerfileParser.parse(text);
  const finalLine = df.getFROMs().at(-1).getRange().start.line;
  const ins = df.getInstructions();
  const final = ins.filter((i) => i.getRange().start.line > finalLine);
  const builder = ins.filter((i) => i.getRange().start.line < finalLine);
  const one = (list, kw) => list.filter((i) => i.getKeyword() === kw);
  const raw = (i) => text.split("\n").slice(i.getRange().start.line, i.getRange().end.line + 1).join("\n");
  return { text, df, final, builder, one, raw };
}

describe("Dockerfile lint", () => {
  for (const flavor of Object.keys(FLAVORS)) {
    test(`docker/Dockerfile.${flavor} passes dockerfile-utils, dockerfilelint and the hadolint rules`, () => {
      const problems = lint(readText(`docker/Dockerfile.${flavor}`));
      assert.deepEqual(problems, [], problems.join("\n"));
    });
  }

  test("shellcheck passes the Dockerfiles' RUN commands and the image build scripts", (t) => {
    if (!existsSync("/usr/bin/shellcheck")) {
      t.skip("shellcheck is not installed (Debian package shellcheck)");
      return;
    }
    const problems = [];
    for (const flavor of Object.keys(FLAVORS)) {
      const text = readText(`docker/Dockerfile.${flavor}`);
      const df = DockerfileParser.parse(text);
      const excluded = df.getComments().flatMap((c) => /hadolint ignore=(\S+)/.exec(c.getContent())?.[1].split(",") ?? [])
        .filter((r) => r.startsWith("SC"));
      for (const i of df.getInstructions().filter((x) => x.getKeyword() === "RUN")) {
        const script = `#!/bin/bash\nset -o pipefail\n${i.getArgumentsContent().replace(/\\\n/g, " ")}\n`;
        try {
          execFileSync("shellcheck", ["-s", "bash", ...(excluded.length ? ["-e", excluded.join(",")] : []), "-"], { input: script });
        } catch (e) {
          problems.push(`Dockerfile.${flavor} line ${i.getRange().start.line + 1}:\n${e.stdout}`);
        }
      }
    }
    for (const script of ["scripts/build-in-image.sh", "scripts/docker-build.sh", "tests/deploy/fetch-kubectl.sh", "tests/deploy/install.sh"]) {
      try {
        execFileSync("shellcheck", [join(ROOT, script)]);
      } catch (e) {
        problems.push(`${script}:\n${e.stdout}`);
      }
    }
    assert.deepEqual(problems, [], problems.join("\n"));
  });

  test("the linters catch a bad Dockerfile", () => {
    const bad = [
      "FROM debian",
      "RUN apt-get update && apt-get install curl",
      "ADD . /src",
      "WORKDIR src",
      "RUN curl -s http://example.invalid | sh",
      "CMD uniattn-serve",
      "BOGUS instruction",
      "",
    ].join("\n");
    const problems = lint(bad).join("\n");
    for (const expected of ["DL3006", "DL3002", "DL3020", "DL3000", "DL4006", "DL3015", "DL3014", "DL3009", "DL3025", "DL3057",
      "dockerfile-utils", "dockerfilelint"]) {
      assert.ok(problems.includes(expected), `expected ${expected} in:\n${problems}`);
    }
  });
});

describe("Dockerfiles agree with the manifests and the server's config", () => {
  for (const [flavor, { overlay }] of Object.entries(FLAVORS)) {
    test(`Dockerfile.${flavor}: multi-stage, builds with scripts/build-in-image.sh, runtime without a compiler`, () => {
      const { df, final, builder, one, raw } = dockerfile(flavor);
      const froms = df.getFROMs().map((f) => f.getExpandedArguments()[0].getValue());
      if (flavor === "cuda") {
        assert.match(froms[0], /^nvidia\/cuda:13\.0\.\d+-devel-ubuntu24\.04$/);
        assert.match(froms.at(-1), /^nvidia\/cuda:13\.0\.\d+-runtime-ubuntu24\.04$/);
        assert.equal(froms[0].replace("-devel-", "-runtime-"), froms.at(-1), "builder and runtime: same CUDA and Ubuntu");
      } else {
        assert.deepEqual([froms[0], froms.at(-1)], ["debian:12", "debian:12-slim"]);
      }
      assert.ok(one(builder, "RUN").some((i) => /^scripts\/build-in-image\.sh \/out$/.test(i.getArgumentsContent())),
        "the builder runs scripts/build-in-image.sh /out");
      const runtimeRuns = one(final, "RUN").map(raw).join("\n");
      for (const compiler of ["build-essential", "g++", "gcc", "clang", "cmake", "ninja-build", "nvcc", "cuda-nvcc", "-dev\\b"]) {
        assert.ok(!new RegExp(`(^|\\s)${compiler.replace("+", "\\+")}`).test(runtimeRuns), `runtime stage installs ${compiler}`);
      }
      const copiedFromBuilder = one(final, "COPY").filter((i) => i.getFromFlag()?.getValue() === "builder");
      assert.deepEqual(copiedFromBuilder.map((i) => i.getArgumentsContent().split(/\s+/)[0]).sort(),
        ["/out/bin/", "/out/runtime-packages.txt", "/out/scripts/"], "what build-in-image.sh stages");
    });

    test(`Dockerfile.${flavor}: ports, HEALTHCHECK, user, entrypoint and config path match the ${overlay} overlay`, () => {
      const { final, one, raw } = dockerfile(flavor);
      const objs = kustomize(`deploy/overlays/${overlay}`);
      const dep = find(objs, "Deployment");
      const server = serverContainer(dep);
      const config = readYaml(`deploy/overlays/${overlay}/config.yaml`);
      const exposed = one(final, "EXPOSE")[0].getArgumentsContent().split(/\s+/).map(Number);
      assert.deepEqual(exposed, [config.server.http_port, config.server.grpc_port], "EXPOSE vs config.yaml");
      assert.deepEqual(server.ports.map((p) => p.containerPort), exposed, "containerPorts vs EXPOSE");
      const hc = raw(one(final, "HEALTHCHECK")[0]);
      const url = /http:\/\/127\.0\.0\.1:(\d+)(\/\S*?)"/.exec(hc);
      assert.ok(url, hc);
      assert.equal(Number(url[1]), config.server.http_port, "HEALTHCHECK port");
      assert.equal(url[2], server.livenessProbe.httpGet.path, "HEALTHCHECK path = livenessProbe path");
      const user = one(final, "USER").at(-1).getArgumentsContent();
      assert.equal(user, `${dep.spec.template.spec.securityContext.runAsUser}:${dep.spec.template.spec.securityContext.runAsGroup}`);
      const entrypoint = JSON.parse(one(final, "ENTRYPOINT")[0].getArgumentsContent());
      const cmd = JSON.parse(one(final, "CMD")[0].getArgumentsContent());
      assert.deepEqual(entrypoint, ["/opt/uniattn/bin/uniattn-serve"]);
      assert.deepEqual(cmd, server.args, "CMD = the Deployment's args");
      const configPath = cmd[cmd.indexOf("--config") + 1];
      const mount = server.volumeMounts.find((m) => m.name === "config");
      assert.equal(configPath, `${mount.mountPath}/config.yaml`, "--config lies in the ConfigMap mount");
      const baked = one(final, "COPY").filter((i) => !i.getFromFlag()).map((i) => i.getArgumentsContent())
        .find((a) => a.endsWith(` ${configPath}`));
      assert.equal(baked, `deploy/overlays/${overlay}/config.yaml ${configPath}`, "the image bakes the overlay's config");
      // The init container's command runs files the image stages: scripts/ -> /opt/uniattn/scripts, bin/ -> bin.
      const init = dep.spec.template.spec.initContainers[0];
      assert.deepEqual(init.command, ["/opt/uniattn/scripts/fetch_model.sh", "/opt/uniattn/bin/uniattn-convert"]);
      assert.ok(/ln -s \/models \/opt\/uniattn\/models/.test(one(final, "RUN").map(raw).join("\n")),
        "fetch_model.sh writes <root>/models/stories15M: /opt/uniattn/models must be /models");
    });
  }
});

describe("build context (.dockerignore)", () => {
  const ig = dockerignore({ caseSensitive: true }).add(readText(".dockerignore").split("\n"));
  const tracked = execFileSync("git", ["ls-files", "--cached", "--others", "--exclude-standard"], { cwd: ROOT, encoding: "utf8" })
    .split("\n").filter(Boolean);

  test("every directory the top-level CMakeLists.txt adds (except tests/) is in the context", () => {
    const dirs = [...readText("CMakeLists.txt").matchAll(/add_subdirectory\((\w+)\)/g)].map((m) => m[1]).filter((d) => d !== "tests");
    assert.ok(dirs.length >= 3);
    for (const d of [...dirs, "CMakeLists.txt", "scripts/setup.sh", "scripts/build-in-image.sh", "scripts/fetch_model.sh", "proto"]) {
      assert.ok(!ig.ignores(d), `${d} is excluded from the build context`);
      const files = tracked.filter((f) => f.startsWith(`${d}/`));
      const dropped = files.filter((f) => ig.ignores(f));
      assert.deepEqual(dropped, [], `files of ${d}/ excluded from the context`);
    }
  });

  test("every COPY source of both Dockerfiles exists and is in the context", () => {
    for (const flavor of Object.keys(FLAVORS)) {
      const { df } = dockerfile(flavor);
      for (const i of df.getInstructions().filter((x) => x.getKeyword() === "COPY")) {
        const args = i.getArgumentsContent().split(/\s+/);
        if (i.getFromFlag()) continue;
        for (const src of args.slice(0, -1)) {
          if (src === ".") continue;
          assert.ok(existsSync(join(ROOT, src)), `${flavor}: COPY ${src} does not exist`);
          assert.ok(!ig.ignores(src), `${flavor}: COPY ${src} is excluded by .dockerignore`);
        }
      }
    }
  });

  test("build outputs, models, caches and node_modules stay out", () => {
    for (const p of ["build/bin/uniattn-serve", "build-image/CMakeCache.txt", "models/stories15M/config.json", ".cache/npm/x.tgz",
      "tests/deploy/node_modules/yaml/package.json", ".git/HEAD", "engine/node_modules/x", "server/foo.o"]) {
      assert.ok(ig.ignores(p), `${p} would enter the build context`);
    }
  });
});

describe("scripts/build-in-image.sh (what the builder stages run) on this build", () => {
  test("--stage-only stages the binaries, fetch_model.sh and a runtime package list that covers every library", () => {
    const bin = serverBinary();
    const build = join(bin, "../..");
    const dest = mkdtempSync(join(tmpdir(), "uniattn-stage-"));
    try {
      try {
        execFileSync(join(ROOT, "scripts/build-in-image.sh"), ["--stage-only", dest], {
          cwd: ROOT, env: { ...process.env, UNIATTN_BUILD_DIR: build }, stdio: ["ignore", "pipe", "pipe"],
        });
      } catch (e) {
        throw new Error(`scripts/build-in-image.sh --stage-only failed (${e.status}):\n${e.stderr}`);
      }
      for (const b of ["uniattn-serve", "uniattn-convert", "uniattn-generate"]) {
        assert.ok(statSync(join(dest, "bin", b)).mode & 0o111, `${b} staged executable`);
      }
      assert.equal(readFileSync(join(dest, "scripts/fetch_model.sh"), "utf8"), readText("scripts/fetch_model.sh"));
      const pkgs = readFileSync(join(dest, "runtime-packages.txt"), "utf8").trim().split("\n");
      for (const p of pkgs) assert.match(p, /^[a-z0-9][a-z0-9.+-]+$/, `package name ${p}`);
      // Every package named is one this distribution knows (the runtime stage installs them by name).
      const known = execFileSync("dpkg-query", ["-W", "-f=${Package}\\n", ...pkgs], { encoding: "utf8" }).trim().split("\n");
      assert.deepEqual(known.sort(), [...pkgs].sort());
      for (const expected of ["libc6", "libstdc++6"]) assert.ok(pkgs.includes(expected), `${expected} in ${pkgs}`);
      // The CPU runtime stage's install, simulated on this Debian 12: the list plus the Dockerfile's own
      // packages resolve (apt-get -s needs no root and changes nothing).
      const { final, one, raw } = dockerfile("cpu");
      const install = one(final, "RUN").map(raw).join("\n");
      const fixed = /apt-get install -y --no-install-recommends ([a-z0-9 .+-]+?)\s*\\?\n/.exec(install)?.[1].trim().split(/\s+/);
      assert.deepEqual(fixed, ["ca-certificates", "curl", "nodejs", "npm"], install);
      // (nodejs and npm are left out: machines here may carry another Node.js build that conflicts with
      // Debian's npm; debian:12-slim has Debian's own pair.)
      const simulated = [...fixed.filter((p) => p !== "nodejs" && p !== "npm"), ...pkgs];
      const sim = execFileSync("apt-get", ["-s", "install", "--no-install-recommends", ...simulated], { encoding: "utf8" });
      assert.match(sim, /\d+ upgraded, \d+ newly installed/);
      const help = execFileSync(join(dest, "bin/uniattn-serve"), ["--help"], { encoding: "utf8" });
      assert.match(help, /--config/);
    } finally {
      rmSync(dest, { recursive: true, force: true });
    }
  });
});
