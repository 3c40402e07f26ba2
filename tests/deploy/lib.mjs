// Helpers for the deploy tests: rendering deploy/ with kubectl's kustomize, schema validation, PromQL
// metric extraction, the Prometheus text format, and starting the real uniattn-serve.
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import ts from "typescript";
import YAML from "yaml";
import { parser as promqlParser } from "@prometheus-io/lezer-promql";

export const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(HERE, "../..");
export const OVERLAYS = ["cpu", "gpu", "gpu-tp2"];

export const readText = (p) => readFileSync(join(ROOT, p), "utf8");
export const readYaml = (p) => YAML.parse(readText(p));

// ---------------------------------------------------------------- kustomize

export function kubectlPath() {
  const p = process.env.UNIATTN_KUBECTL || join(ROOT, ".cache/kubectl-v1.33.9/kubectl");
  if (!existsSync(p)) {
    throw new Error(`kubectl not found at ${p}: run tests/deploy/install.sh (it fetches the pinned kubectl), ` +
      "or set UNIATTN_KUBECTL to a kubectl >= 1.27");
  }
  return p;
}

function parseDocs(text, what) {
  const docs = YAML.parseAllDocuments(text);
  for (const d of docs) {
    if (d.errors.length) throw new Error(`${what}: ${d.errors.map((e) => e.message).join("; ")}`);
  }
  return docs.map((d) => d.toJS()).filter((o) => o !== null);
}

// Renders a kustomization directory (absolute or relative to the repository root) to a list of objects.
const rendered = new Map();
export function kustomize(dir) {
  const abs = resolve(ROOT, dir);
  if (!rendered.has(abs)) {
    const out = execFileSync(kubectlPath(), ["kustomize", abs], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    rendered.set(abs, parseDocs(out, `kustomize ${dir}`));
  }
  return structuredClone(rendered.get(abs));
}

// Renders `overlay` plus `components` through a throwaway kustomization (as a user's own overlay would).
export function kustomizeWith(overlay, components) {
  const dir = mkdtempSync(join(tmpdir(), "uniattn-kustomize-"));
  try {
    const rel = (p) => relative(dir, join(ROOT, p));
    writeFileSync(join(dir, "kustomization.yaml"), YAML.stringify({
      apiVersion: "kustomize.config.k8s.io/v1beta1",
      kind: "Kustomization",
      resources: [rel(overlay)],
      components: components.map(rel),
    }));
    return kustomize(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export const find = (objs, kind, name) => objs.find((o) => o.kind === kind && (!name || o.metadata.name === name));
export const findAll = (objs, kind) => objs.filter((o) => o.kind === kind);
export const serverContainer = (dep) => dep.spec.template.spec.containers.find((c) => c.name === "server");

// The config.yaml an overlay's ConfigMap carries (the generated uniattn-config-<hash>).
export function renderedConfig(objs) {
  const cms = findAll(objs, "ConfigMap").filter((c) => c.metadata.name.startsWith("uniattn-config"));
  if (cms.length !== 1) throw new Error(`expected one uniattn-config ConfigMap, found ${cms.length}`);
  return { name: cms[0].metadata.name, config: YAML.parse(cms[0].data["config.yaml"]) };
}

// ---------------------------------------------------------------- schemas

// apiVersion/kind -> the model package path and its TypeScript interface.
export function modelFor(obj) {
  const [group, version] = obj.apiVersion.includes("/") ? obj.apiVersion.split("/") : ["", obj.apiVersion];
  const kind = obj.kind;
  let pkg;
  if (group === "keda.sh") pkg = `@kubernetes-models/keda/keda.sh/${version}/${kind}`;
  else if (group === "monitoring.coreos.com") pkg = `@kubernetes-models/prometheus-operator/monitoring.coreos.com/${version}/${kind}`;
  else if (group === "") pkg = `kubernetes-models/${version}/${kind}`;
  else pkg = `kubernetes-models/${group}/${version}/${kind}`;
  return { pkg, iface: `I${kind}` };
}

// kubernetes-models' validate(): the OpenAPI schema (types, required fields, enums, formats). Returns
// one message per invalid object.
export async function validateModels(objs) {
  const errors = [];
  for (const obj of objs) {
    const { pkg } = modelFor(obj);
    let mod;
    try {
      mod = await import(pkg);
    } catch (e) {
      errors.push(`${obj.kind}/${obj.metadata?.name}: no schema for ${obj.apiVersion} ${obj.kind} (${pkg})`);
      continue;
    }
    const Model = mod[obj.kind];
    try {
      new Model(obj).validate();
    } catch (e) {
      errors.push(`${obj.kind}/${obj.metadata?.name}: ${e.message}`);
    }
  }
  return errors;
}

// Type-checks values as object literals against TypeScript interfaces. Excess property checks make this
// strict: an unknown field (a typo such as `readinesProbe`) is an error, as it is for the API server's
// strict field validation, which validate() above does not check. `entries`: [{label, pkg, iface, value,
// jsonEnums}]. TypeScript reports the first problem of an array or union only: fix, rerun.
export function typeCheck(entries) {
  const file = join(HERE, "__typecheck__.ts");
  const lines = [];
  entries.forEach((e, i) => {
    lines.push(`import type { ${e.iface} as T${i} } from ${JSON.stringify(e.pkg)};`);
  });
  // Json<T>: T as JSON can hold it: a string enum accepts its members' values ("absolute" for
  // ThresholdsMode.Absolute), which TypeScript otherwise refuses for a string literal.
  lines.push("type Json<T> = T extends string ? `${T}` : T extends readonly (infer U)[] ? Json<U>[] : " +
    "T extends object ? { [K in keyof T]: Json<T[K]> } : T;");
  const starts = [];
  let offset = lines.reduce((n, l) => n + l.length + 1, 0);
  entries.forEach((e, i) => {
    const type = e.jsonEnums ? `Json<T${i}>` : `T${i}`;
    const line = `export const v${i}: ${type} = ${JSON.stringify(e.value, null, 1)};`;
    starts.push(offset);
    lines.push(line);
    offset += line.length + 1;
  });
  const text = lines.join("\n");
  const options = {
    strict: true, noEmit: true, target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler, skipLibCheck: true, types: [],
  };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (name, lang, ...rest) =>
    name === file ? ts.createSourceFile(name, text, lang) : getSourceFile(name, lang, ...rest);
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (name) => name === file || fileExists(name);
  const readFile = host.readFile.bind(host);
  host.readFile = (name) => (name === file ? text : readFile(name));
  const program = ts.createProgram([file], options, host);
  const diags = ts.getPreEmitDiagnostics(program).filter((d) => d.file?.fileName === file || !d.file);
  return diags.map((d) => {
    const msg = ts.flattenDiagnosticMessageText(d.messageText, "\n");
    if (d.start === undefined) return msg;
    const { line } = d.file.getLineAndCharacterOfPosition(d.start);
    let idx = -1;
    for (let i = 0; i < starts.length && starts[i] <= d.start; i++) idx = i;
    const snippet = text.split("\n")[line].trim();
    return `${idx >= 0 ? entries[idx].label : "?"}: ${msg.split("\n")[0]} (at: ${snippet})`;
  });
}

export const typeCheckObjects = (objs) =>
  typeCheck(objs.map((o) => ({ label: `${o.kind}/${o.metadata?.name}`, ...modelFor(o), value: o })));

// ---------------------------------------------------------------- PromQL and the Prometheus text format

// Grafana's variables become valid PromQL; label_values(selector, label) becomes its selector.
export function grafanaToPromql(expr) {
  let e = expr.replaceAll("$__rate_interval", "1m").replaceAll("$__interval", "1m").replaceAll("$__range", "1h");
  const lv = /^\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$/s.exec(e);
  if (lv) e = lv[1];
  return e;
}

// Parses PromQL with Prometheus' own grammar; returns {metrics, labels, errors}.
export function promqlRefs(expr) {
  const tree = promqlParser.parse(expr);
  const metrics = new Set();
  const labels = new Set();
  const errors = [];
  tree.iterate({
    enter(n) {
      if (n.type.isError) errors.push(`syntax error at ${n.from}: ...${expr.slice(Math.max(0, n.from - 20), n.from + 20)}...`);
      if (n.name === "Identifier" && n.node.parent?.name === "VectorSelector") metrics.add(expr.slice(n.from, n.to));
      if (n.name === "LabelName") labels.add(expr.slice(n.from, n.to));
    },
  });
  return { metrics, labels, errors };
}

// Every query in the dashboard JSON: [{where, expr}].
export function dashboardQueries(dashboard) {
  const out = [];
  const walk = (panels) => {
    for (const p of panels ?? []) {
      for (const t of p.targets ?? []) if (t.expr) out.push({ where: `panel "${p.title}" ${t.refId}`, expr: t.expr });
      walk(p.panels);
    }
  };
  walk(dashboard.panels);
  for (const v of dashboard.templating?.list ?? []) {
    if (v.type === "query") {
      const q = typeof v.query === "string" ? v.query : v.query?.query;
      out.push({ where: `variable ${v.name}`, expr: q });
    }
  }
  return out;
}

// Prometheus text exposition -> Map(sample name -> {family, type, labels:Set}).
export function parseExposition(text) {
  const types = new Map();
  const samples = new Map();
  for (const line of text.split("\n")) {
    if (line.startsWith("# TYPE ")) {
      const [, , name, type] = line.split(" ");
      types.set(name, type);
      continue;
    }
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+\S+/.exec(line);
    if (!m) throw new Error(`bad exposition line: ${line}`);
    const name = m[1];
    const labels = new Set([...(m[3] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="/g)].map((x) => x[1]));
    const family = types.has(name) ? name : name.replace(/_(bucket|sum|count)$/, "");
    const entry = samples.get(name) ?? { family, type: types.get(family), labels: new Set() };
    for (const l of labels) entry.labels.add(l);
    samples.set(name, entry);
  }
  return samples;
}

// Labels Prometheus (the Operator's ServiceMonitor) attaches to every scraped series.
export const TARGET_LABELS = new Set(["namespace", "pod", "service", "job", "instance", "container", "endpoint"]);

// ---------------------------------------------------------------- the real server

export function serverBinary() {
  const p = process.env.UNIATTN_SERVE || resolve(ROOT, process.env.UNIATTN_BUILD_DIR || "build", "bin/uniattn-serve");
  if (!existsSync(p)) {
    throw new Error(`uniattn-serve is not built (${p} does not exist): the deploy tests check the manifests ` +
      "and the dashboard against the real server; build it with scripts/setup.sh (UNIATTN_SERVE overrides the path)");
  }
  return p;
}

export function defaultModelDir() {
  const p = join(ROOT, "models/stories15M");
  if (!existsSync(join(p, ".complete"))) {
    throw new Error(`the default model is missing (${p}): run scripts/setup.sh (scripts/fetch_model.sh)`);
  }
  return p;
}

// Starts uniattn-serve with `args`; resolves once it printed `ready`, with its ports.
export function startServer(args, { timeoutMs = 60000 } = {}) {
  const bin = serverBinary();
  return new Promise((resolvePromise, reject) => {
    const proc = spawn(bin, args, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    proc.stderr.on("data", (d) => {
      stderr += d;
      if (stderr.length > 20000) stderr = stderr.slice(-20000);
    });
    const info = { proc, stderr: () => stderr };
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`uniattn-serve did not become ready in ${timeoutMs} ms; stderr:\n${stderr}`));
    }, timeoutMs);
    proc.on("exit", (code, sig) => {
      clearTimeout(timer);
      info.exit = { code, sig };
      reject(new Error(`uniattn-serve exited (${code ?? sig}) before ready; stderr:\n${stderr}`));
    });
    info.exited = new Promise((r) => proc.on("exit", (code, sig) => r({ code, sig })));
    const rl = createInterface({ input: proc.stdout });
    rl.on("line", (line) => {
      const l = /^listening http=(.*):(\d+) grpc=(?:(.*):(\d+)|off)/.exec(line);
      if (l) {
        info.host = l[1];
        info.port = Number(l[2]);
        info.grpcPort = l[4] ? Number(l[4]) : null;
      }
      if (line.startsWith("ready ")) {
        clearTimeout(timer);
        info.ready = line;
        resolvePromise(info);
      }
    });
  });
}

export async function stopServer(info, signal = "SIGTERM") {
  if (!info || info.exit) return info?.exit;
  info.proc.kill(signal);
  return info.exited;
}
