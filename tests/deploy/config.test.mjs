// The manifests against the server's configuration: the ports and probe paths the Deployment uses are the
// ones config/default.yaml, each overlay's config.yaml and the server's route table say; the grace period
// covers preStop plus the drain timeout; the server itself accepts each overlay's config.
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import YAML from "yaml";
import { OVERLAYS, ROOT, kustomize, find, serverContainer, renderedConfig, readText, readYaml, serverBinary } from "./lib.mjs";

// GET routes in the server's route table (server/http_server.cc).
function serverGetRoutes() {
  const src = readText("server/http_route.cc");
  return new Set([...src.matchAll(/\{"(\/[^"]*)",\s*http::verb::get\b/g)].map((m) => m[1]));
}

// The pod's grace period must cover preStop, then the server's drain, plus room to exit.
function graceProblems(objs) {
  const { config } = renderedConfig(objs);
  const dep = find(objs, "Deployment");
  const cmd = serverContainer(dep).lifecycle?.preStop?.exec?.command ?? [];
  if (cmd[0] !== "sleep" || !(Number(cmd[1]) >= 3 && Number(cmd[1]) <= 15)) return [`preStop is not a 3..15 s sleep: ${cmd}`];
  const want = Number(cmd[1]) + config.server.drain_timeout_s + 10;
  const got = dep.spec.template.spec.terminationGracePeriodSeconds;
  return got === want ? [] : [`terminationGracePeriodSeconds ${got}, expected ${cmd[1]} + ${config.server.drain_timeout_s} + 10 = ${want}`];
}

describe("ports and probes match the server", () => {
  const defaults = readYaml("config/default.yaml");

  test("config/default.yaml's ports are the ones the images and manifests use", () => {
    for (const overlay of OVERLAYS) {
      const { config } = renderedConfig(kustomize(`deploy/overlays/${overlay}`));
      assert.equal(config.server.http_port, defaults.server.http_port, `${overlay} http_port`);
      assert.equal(config.server.grpc_port, defaults.server.grpc_port, `${overlay} grpc_port`);
    }
  });

  for (const overlay of OVERLAYS) {
    test(`${overlay}: containerPorts, Service ports and probe ports follow config.yaml; the server listens on every interface`, () => {
      const objs = kustomize(`deploy/overlays/${overlay}`);
      const { config } = renderedConfig(objs);
      assert.deepEqual(config, readYaml(`deploy/overlays/${overlay}/config.yaml`), "the ConfigMap carries config.yaml");
      const server = serverContainer(find(objs, "Deployment"));
      const ports = Object.fromEntries(server.ports.map((p) => [p.name, p.containerPort]));
      assert.deepEqual(ports, { http: config.server.http_port, grpc: config.server.grpc_port });
      const svc = find(objs, "Service", "uniattn-serve");
      for (const p of svc.spec.ports) assert.equal(p.port, ports[p.targetPort], `Service port ${p.name}`);
      assert.equal(config.server.host, "0.0.0.0", "the kubelet probes the pod IP: bind every interface");
      assert.ok(config.server.grpc_port > 0, "gRPC enabled on a fixed port");
    });

    test(`${overlay}: startup/liveness probe /health and readiness probe /ready, both GET routes of the server`, () => {
      const server = serverContainer(find(kustomize(`deploy/overlays/${overlay}`), "Deployment"));
      const routes = serverGetRoutes();
      assert.ok(routes.size >= 3, `route table not found in server/http_route.cc: ${[...routes]}`);
      assert.equal(server.startupProbe.httpGet.path, "/health");
      assert.equal(server.livenessProbe.httpGet.path, "/health");
      assert.equal(server.readinessProbe.httpGet.path, "/ready");
      for (const probe of ["startupProbe", "livenessProbe", "readinessProbe"]) {
        assert.ok(routes.has(server[probe].httpGet.path), `${probe} ${server[probe].httpGet.path} is not a GET route`);
        assert.equal(server[probe].httpGet.port, "http");
      }
      assert.ok(routes.has("/metrics"), "the ServiceMonitor scrapes /metrics");
      // Liveness must not kill a pod whose /ready fails (loading, draining): they must be different paths.
      assert.notEqual(server.livenessProbe.httpGet.path, server.readinessProbe.httpGet.path);
    });

    test(`${overlay}: terminationGracePeriodSeconds = preStop sleep + server.drain_timeout_s + 10 s`, () => {
      assert.deepEqual(graceProblems(kustomize(`deploy/overlays/${overlay}`)), []);
    });

    test(`${overlay}: engine threads match the CPU request`, () => {
      const objs = kustomize(`deploy/overlays/${overlay}`);
      const { config } = renderedConfig(objs);
      const server = serverContainer(find(objs, "Deployment"));
      assert.equal(config.engine.num_threads, Number(server.resources.requests.cpu));
    });
  }

  test("the grace-period check catches a grace period that does not cover the drain", () => {
    const objs = kustomize("deploy/overlays/gpu");
    find(objs, "Deployment").spec.template.spec.terminationGracePeriodSeconds = 45;  // the cpu overlay's
    assert.deepEqual(graceProblems(objs), ["terminationGracePeriodSeconds 45, expected 5 + 120 + 10 = 135"]);
  });
});

describe("the server accepts each overlay's config", () => {
  for (const overlay of OVERLAYS) {
    test(`uniattn-serve --config deploy/overlays/${overlay}/config.yaml --print-config`, () => {
      const bin = serverBinary();
      const out = execFileSync(bin, ["--config", `deploy/overlays/${overlay}/config.yaml`, "--print-config"], {
        cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"],
      });
      const effective = YAML.parse(out);
      const file = readYaml(`deploy/overlays/${overlay}/config.yaml`);
      assert.equal(effective.server.http_port, file.server.http_port);
      assert.equal(effective.server.grpc_port, file.server.grpc_port);
      assert.equal(effective.server.host, file.server.host);
      assert.equal(effective.server.drain_timeout_s, file.server.drain_timeout_s);
      assert.equal(effective.model.path, file.model.path);
      assert.equal(effective.engine.backend, file.engine.backend);
    });
  }

  test("and rejects a config with an unknown key (so the check above means something)", () => {
    const bin = serverBinary();
    let failed = false;
    try {
      execFileSync(bin, ["--config", "deploy/overlays/cpu/config.yaml", "--set", "server.http_prot=8000", "--print-config"], {
        cwd: ROOT, stdio: ["ignore", "pipe", "pipe"],
      });
    } catch (e) {
      failed = true;
      assert.equal(e.status, 2);
      assert.match(String(e.stderr), /http_prot/);
    }
    assert.ok(failed, "an unknown key was accepted");
  });
});
