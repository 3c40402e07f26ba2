// deploy/: every overlay (and the model-pvc component) renders with kubectl's kustomize, every object
// passes its Kubernetes or CRD schema (kubernetes-models validate() plus a strict unknown-field check),
// and the objects agree with each other: selectors, named ports, ConfigMaps, the autoscaler's target.
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import {
  OVERLAYS, kustomize, kustomizeWith, validateModels, typeCheckObjects, find, findAll, serverContainer,
  renderedConfig, readText,
} from "./lib.mjs";

const matches = (selector, labels) => Object.entries(selector).every(([k, v]) => labels?.[k] === v);

const renders = {
  ...Object.fromEntries(OVERLAYS.map((o) => [o, () => kustomize(`deploy/overlays/${o}`)])),
  "gpu+model-pvc": () => kustomizeWith("deploy/overlays/gpu", ["deploy/components/model-pvc"]),
  "cpu+model-pvc": () => kustomizeWith("deploy/overlays/cpu", ["deploy/components/model-pvc"]),
};

for (const [name, render] of Object.entries(renders)) {
  describe(`render ${name}`, () => {
    const objs = render();

    test("renders the expected kinds, all in namespace uniattn", () => {
      const kinds = objs.map((o) => o.kind).sort();
      for (const k of ["Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
        "ServiceMonitor", "ScaledObject"]) {
        assert.ok(kinds.includes(k), `${name}: no ${k} in ${kinds.join(", ")}`);
      }
      for (const o of objs) {
        if (o.kind === "Namespace") continue;
        assert.equal(o.metadata.namespace, "uniattn", `${o.kind}/${o.metadata.name} namespace`);
      }
    });

    test("every object passes its schema (kubernetes-models validate())", async () => {
      const errors = await validateModels(objs);
      assert.deepEqual(errors, [], errors.join("\n"));
    });

    test("no unknown or mistyped fields (TypeScript excess-property check on the models' types)", () => {
      const errors = typeCheckObjects(objs);
      assert.deepEqual(errors, [], errors.join("\n"));
    });

    test("references resolve: ConfigMaps, PVCs, ServiceAccount, volumes, named ports", () => {
      const dep = find(objs, "Deployment", "uniattn-serve");
      const pod = dep.spec.template.spec;
      assert.ok(matches(dep.spec.selector.matchLabels, dep.spec.template.metadata.labels), "selector vs pod labels");
      assert.ok(find(objs, "ServiceAccount", pod.serviceAccountName), `ServiceAccount ${pod.serviceAccountName}`);
      const volumes = new Map(pod.volumes.map((v) => [v.name, v]));
      for (const v of pod.volumes) {
        if (v.configMap) assert.ok(find(objs, "ConfigMap", v.configMap.name), `ConfigMap ${v.configMap.name} (volume ${v.name})`);
        if (v.persistentVolumeClaim) {
          assert.ok(find(objs, "PersistentVolumeClaim", v.persistentVolumeClaim.claimName), `PVC of volume ${v.name}`);
        }
      }
      for (const c of [...pod.containers, ...(pod.initContainers ?? [])]) {
        for (const m of c.volumeMounts ?? []) assert.ok(volumes.has(m.name), `${c.name} mounts unknown volume ${m.name}`);
        assert.match(c.image, /^uniattn-serve:\d+\.\d+\.\d+-(cpu|cuda)$/, `${c.name} image`);
      }
      const server = serverContainer(dep);
      const portNames = new Set(server.ports.map((p) => p.name));
      for (const probe of ["startupProbe", "livenessProbe", "readinessProbe"]) {
        assert.ok(portNames.has(server[probe].httpGet.port), `${probe} port ${server[probe].httpGet.port}`);
      }
    });

    test("Services select the pods and target named container ports; HTTP and gRPC carry appProtocol", () => {
      const dep = find(objs, "Deployment", "uniattn-serve");
      const server = serverContainer(dep);
      const portNames = new Set(server.ports.map((p) => p.name));
      for (const svc of findAll(objs, "Service")) {
        assert.ok(matches(svc.spec.selector, dep.spec.template.metadata.labels), `${svc.metadata.name} selects no pod`);
        for (const p of svc.spec.ports) {
          assert.ok(portNames.has(p.targetPort), `${svc.metadata.name} port ${p.name} -> ${p.targetPort}`);
          assert.ok(p.appProtocol, `${svc.metadata.name} port ${p.name} has no appProtocol`);
        }
      }
      const main = find(objs, "Service", "uniattn-serve");
      assert.deepEqual(main.spec.ports.map((p) => [p.name, p.appProtocol]), [["http", "http"], ["grpc", "kubernetes.io/h2c"]]);
    });

    test("ServiceMonitor scrapes /metrics on exactly one Service's http port", () => {
      const sm = find(objs, "ServiceMonitor");
      const selected = findAll(objs, "Service").filter((s) => matches(sm.spec.selector.matchLabels, s.metadata.labels));
      assert.equal(selected.length, 1, `ServiceMonitor selects ${selected.map((s) => s.metadata.name)} (duplicates scrape)`);
      assert.deepEqual(sm.spec.endpoints.map((e) => [e.port, e.path]), [["http", "/metrics"]]);
      assert.ok(selected[0].spec.ports.some((p) => p.name === "http"));
    });

    test("KEDA scales the Deployment on uniattn:num_requests_waiting, threshold 5, matching this namespace/Service", () => {
      const so = find(objs, "ScaledObject");
      const dep = find(objs, "Deployment");
      assert.equal(so.spec.scaleTargetRef.name, dep.metadata.name);
      assert.equal(so.spec.scaleTargetRef.kind ?? "Deployment", "Deployment");
      assert.equal(dep.spec.replicas, undefined, "the Deployment must not set replicas: the HPA owns them");
      assert.equal(so.spec.triggers.length, 1);
      const t = so.spec.triggers[0];
      assert.equal(t.type, "prometheus");
      assert.equal(t.metadata.threshold, "5");
      assert.equal(t.metricType ?? "AverageValue", "AverageValue");
      assert.match(t.metadata.query, /^sum\(uniattn:num_requests_waiting\{/);
      const sm = find(objs, "ServiceMonitor");
      const svc = findAll(objs, "Service").find((s) => matches(sm.spec.selector.matchLabels, s.metadata.labels));
      assert.ok(t.metadata.query.includes(`namespace="${so.metadata.namespace}"`), "query's namespace matcher");
      assert.ok(t.metadata.query.includes(`service="${svc.metadata.name}"`), "query's service matcher");
      assert.ok(so.spec.minReplicaCount >= 1 && so.spec.maxReplicaCount > so.spec.minReplicaCount);
    });

    test("PodDisruptionBudget covers the pods", () => {
      const pdb = find(objs, "PodDisruptionBudget");
      const dep = find(objs, "Deployment");
      assert.ok(matches(pdb.spec.selector.matchLabels, dep.spec.template.metadata.labels));
    });

    test("pods run as the image's non-root user with a read-only root filesystem", () => {
      const pod = find(objs, "Deployment").spec.template.spec;
      assert.equal(pod.securityContext.runAsNonRoot, true);
      assert.equal(pod.securityContext.runAsUser, 10001, "the images' USER 10001");
      for (const c of [...pod.containers, ...(pod.initContainers ?? [])]) {
        assert.equal(c.securityContext.readOnlyRootFilesystem, true, c.name);
        assert.equal(c.securityContext.allowPrivilegeEscalation, false, c.name);
        assert.deepEqual(c.securityContext.capabilities.drop, ["ALL"], c.name);
        assert.ok(c.volumeMounts.some((m) => m.mountPath === "/tmp"), `${c.name}: /tmp must be writable`);
      }
    });

    test("the model volume is served read-only at /models and the config's model.path lies in it", () => {
      const dep = find(objs, "Deployment");
      const server = serverContainer(dep);
      const m = server.volumeMounts.find((v) => v.name === "models");
      assert.equal(m.mountPath, "/models");
      assert.equal(m.readOnly, true);
      const { config } = renderedConfig(objs);
      assert.ok(config.model.path.startsWith("/models/"), `model.path ${config.model.path}`);
      const init = dep.spec.template.spec.initContainers ?? [];
      const vol = dep.spec.template.spec.volumes.find((v) => v.name === "models");
      if (vol.emptyDir) {
        // The init container must fetch the model the config serves.
        assert.equal(init.length, 1, "an emptyDir model volume needs the fetch-model init container");
        assert.deepEqual(init[0].command, ["/opt/uniattn/scripts/fetch_model.sh", "/opt/uniattn/bin/uniattn-convert"]);
        assert.equal(config.model.path, "/models/stories15M", "fetch_model.sh writes models/stories15M");
        assert.ok(init[0].volumeMounts.some((v) => v.name === "models" && v.mountPath === "/models" && !v.readOnly));
      } else {
        assert.ok(vol.persistentVolumeClaim, "models is an emptyDir or a PVC");
        assert.equal(init.length, 0, "no fetch step with a PVC");
      }
    });

    test("the Grafana dashboard ConfigMap is labelled for the sidecar and fits an annotation", () => {
      const cm = find(objs, "ConfigMap", "uniattn-serve-dashboard");
      assert.equal(cm.metadata.labels.grafana_dashboard, "1");
      const json = cm.data["uniattn-serve.json"];
      assert.deepEqual(JSON.parse(json), JSON.parse(readText("deploy/base/dashboards/uniattn-serve.json")));
      // kubectl apply (client side) copies the object into an annotation; annotations are capped at 256 KiB.
      assert.ok(json.length < 200 * 1024, `dashboard is ${json.length} bytes`);
    });
  });
}

describe("overlay differences", () => {
  test("gpu asks for one nvidia.com/gpu and tolerates the GPU taint; cpu asks for none", () => {
    const gpu = serverContainer(find(kustomize("deploy/overlays/gpu"), "Deployment"));
    assert.equal(String(gpu.resources.limits["nvidia.com/gpu"]), "1");
    assert.equal(String(gpu.resources.requests["nvidia.com/gpu"]), "1");
    const gpuPod = find(kustomize("deploy/overlays/gpu"), "Deployment").spec.template.spec;
    assert.ok(gpuPod.tolerations.some((t) => t.key === "nvidia.com/gpu"));
    const cpu = serverContainer(find(kustomize("deploy/overlays/cpu"), "Deployment"));
    assert.equal(cpu.resources.limits?.["nvidia.com/gpu"], undefined);
    assert.equal(renderedConfig(kustomize("deploy/overlays/gpu")).config.engine.backend, "cuda");
    assert.equal(renderedConfig(kustomize("deploy/overlays/cpu")).config.engine.backend, "cpu");
  });

  test("image tags are the ones scripts/docker-build.sh builds: <CMake project version>-<flavor>", () => {
    const version = /project\(uniattn_serve VERSION ([0-9.]+)/.exec(readText("CMakeLists.txt"))[1];
    for (const [overlay, flavor] of [["cpu", "cpu"], ["gpu", "cuda"]]) {
      const dep = find(kustomize(`deploy/overlays/${overlay}`), "Deployment");
      assert.equal(serverContainer(dep).image, `uniattn-serve:${version}-${flavor}`, overlay);
    }
  });
});

describe("the checks catch broken manifests", () => {
  const objs = kustomize("deploy/overlays/cpu");
  const dep = () => structuredClone(find(objs, "Deployment"));

  test("schema validation rejects a mistyped value", async () => {
    const d = dep();
    serverContainer(d).ports[0].containerPort = "8000";
    const errors = await validateModels([d]);
    assert.equal(errors.length, 1);
    assert.match(errors[0], /containerPort must be integer/);
  });

  test("the strict check rejects an unknown field (a typo)", () => {
    const d = dep();
    const c = serverContainer(d);
    c.readinesProbe = c.readinessProbe;
    const errors = typeCheckObjects([d]);
    assert.equal(errors.length, 1, errors.join("\n"));
    assert.match(errors[0], /readinesProbe/);
  });

  test("the strict check rejects an unknown field in a CRD (KEDA)", () => {
    const so = structuredClone(find(objs, "ScaledObject"));
    so.spec.maxReplicas = 3;
    const errors = typeCheckObjects([so]);
    assert.equal(errors.length, 1, errors.join("\n"));
    assert.match(errors[0], /maxReplicas/);
  });
});
