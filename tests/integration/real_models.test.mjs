// Real checkpoints' files as a user brings them: tiny random weights under the published config.json keys of
// Llama-3.1-8B-Instruct and Qwen3-0.6B (rope_scaling llama3, eos lists, q/k norm, tied embeddings) with the real
// tokenizer.json / tokenizer_config.json (chat_template included) fetched by scripts/fetch_testdata.sh, and the
// published generation_config.json. Driven by the official `openai` npm client: a streamed chat completion
// (system + user) rendered by the model's own Jinja template ends at the model's end-of-turn token with
// finish_reason "stop", and usage.prompt_tokens equals /tokenize of the same messages.
import assert from "node:assert/strict";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";

import { sourceDir, startServer } from "./lib/harness.mjs";

// Seeded uniform values in [-a, a) (a small LCG: the test must not depend on Math.random).
function randomFloats(n, a, seed) {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; ++i) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 4294967296 - 0.5) * 2 * a;
  }
  return out;
}

function writeSafetensors(path, tensors) {
  const header = {};
  let offset = 0;
  for (const [name, { shape, data }] of Object.entries(tensors)) {
    header[name] = { dtype: "F32", shape, data_offsets: [offset, offset + data.byteLength] };
    offset += data.byteLength;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(json.length));
  const parts = [head, Buffer.from(json)];
  for (const { data } of Object.values(tensors)) parts.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  writeFileSync(path, Buffer.concat(parts));
}

// A tiny model of `config`'s family: every tensor transformers would save, uniform random.
function writeTinyModel(dir, config, { qkNorm = false } = {}) {
  const d = config.hidden_size;
  const hd = config.head_dim ?? d / config.num_attention_heads;
  const q = config.num_attention_heads * hd;
  const kv = config.num_key_value_heads * hd;
  const ff = config.intermediate_size;
  let seed = 1;
  const t = (rows, cols) => ({ shape: cols ? [rows, cols] : [rows], data: randomFloats(rows * (cols ?? 1), cols ? 1 / Math.sqrt(cols) : 0.1, seed++) });
  const ones = (n) => {
    const x = t(n);
    for (let i = 0; i < n; ++i) x.data[i] += 1;
    return x;
  };
  const tensors = { "model.embed_tokens.weight": t(config.vocab_size, d), "model.norm.weight": ones(d) };
  if (!config.tie_word_embeddings) tensors["lm_head.weight"] = t(config.vocab_size, d);
  for (let l = 0; l < config.num_hidden_layers; ++l) {
    const p = `model.layers.${l}.`;
    Object.assign(tensors, {
      [p + "input_layernorm.weight"]: ones(d),
      [p + "post_attention_layernorm.weight"]: ones(d),
      [p + "self_attn.q_proj.weight"]: t(q, d),
      [p + "self_attn.k_proj.weight"]: t(kv, d),
      [p + "self_attn.v_proj.weight"]: t(kv, d),
      [p + "self_attn.o_proj.weight"]: t(d, q),
      [p + "mlp.gate_proj.weight"]: t(ff, d),
      [p + "mlp.up_proj.weight"]: t(ff, d),
      [p + "mlp.down_proj.weight"]: t(d, ff),
    });
    if (qkNorm) {
      tensors[p + "self_attn.q_norm.weight"] = ones(hd);
      tensors[p + "self_attn.k_norm.weight"] = ones(hd);
    }
  }
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), JSON.stringify(config, null, 2));
  writeSafetensors(join(dir, "model.safetensors"), tensors);
}

const tokenizers = join(sourceDir, "models/tokenizers");
const haveFiles =
  existsSync(join(tokenizers, "llama-3.1/tokenizer.json")) && existsSync(join(tokenizers, "qwen3/tokenizer.json")) &&
  existsSync(join(sourceDir, "models/llama.cpp/templates/meta-llama-Llama-3.1-8B-Instruct.jinja"));

const families = [
  {
    name: "Llama-3.1-8B-Instruct",
    tokenizer: "llama-3.1",
    // Llama-3.1-8B-Instruct's config.json keys, with tiny sizes.
    config: {
      architectures: ["LlamaForCausalLM"], model_type: "llama", attention_bias: false, attention_dropout: 0.0,
      bos_token_id: 128000, eos_token_id: [128001, 128008, 128009], hidden_act: "silu", hidden_size: 32,
      initializer_range: 0.02, intermediate_size: 64, max_position_embeddings: 4096, mlp_bias: false,
      num_attention_heads: 4, num_hidden_layers: 2, num_key_value_heads: 2, pretraining_tp: 1, rms_norm_eps: 1e-5,
      rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192, rope_type: "llama3" },
      rope_theta: 500000.0, tie_word_embeddings: false, torch_dtype: "float32", use_cache: true, vocab_size: 128256,
    },
    generation: { bos_token_id: 128000, do_sample: true, eos_token_id: [128001, 128008, 128009], temperature: 0.6, top_p: 0.9 },
    endOfTurn: 128009, // <|eot_id|>
    otherEos: 128008, // <|eom_id|>: config.json and generation_config.json list it; the tokenizer's eos is <|eot_id|>
    firstTokens: [128000, 128006], // <|begin_of_text|><|start_header_id|>
    templateText: "Cutting Knowledge Date: December 2023", // 3.1's template always writes this system header
    // The @lenml package's tokenizer_config.json carries a Llama-3.0-style template; the published 3.1 template
    // (llama.cpp's corpus) goes beside it as chat_template.jinja, which newer checkpoints ship and which wins.
    chatTemplateFile: "llama.cpp/templates/meta-llama-Llama-3.1-8B-Instruct.jinja",
    qkNorm: false,
  },
  {
    name: "Qwen3-0.6B",
    tokenizer: "qwen3",
    config: {
      architectures: ["Qwen3ForCausalLM"], model_type: "qwen3", attention_bias: false, attention_dropout: 0.0,
      bos_token_id: 151643, eos_token_id: 151645, head_dim: 16, hidden_act: "silu", hidden_size: 32,
      initializer_range: 0.02, intermediate_size: 64, max_position_embeddings: 4096, max_window_layers: 2,
      num_attention_heads: 4, num_hidden_layers: 2, num_key_value_heads: 2, rms_norm_eps: 1e-6, rope_scaling: null,
      rope_theta: 1000000, sliding_window: null, tie_word_embeddings: true, torch_dtype: "float32", use_cache: true,
      use_sliding_window: false, vocab_size: 151936,
    },
    generation: { bos_token_id: 151643, do_sample: true, eos_token_id: [151645, 151643], pad_token_id: 151643, temperature: 0.6, top_k: 20, top_p: 0.95 },
    endOfTurn: 151645, // <|im_end|>
    otherEos: 151643, // <|endoftext|>: generation_config.json lists it
    firstTokens: [151644], // <|im_start|> (Qwen adds no BOS)
    templateText: "system\nYou are a terse assistant.",
    qkNorm: true,
  },
];

describe("real checkpoints' files through the openai client", { skip: haveFiles ? false : "run scripts/fetch_testdata.sh" }, () => {
  const work = mkdtempSync(join(tmpdir(), "uniattn-real-"));
  after(() => rmSync(work, { recursive: true, force: true }));

  for (const f of families) {
    describe(f.name, () => {
      let server;
      let client;
      const dir = join(work, f.tokenizer);
      before(async () => {
        writeTinyModel(dir, f.config, { qkNorm: f.qkNorm });
        writeFileSync(join(dir, "generation_config.json"), JSON.stringify(f.generation));
        for (const file of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(tokenizers, f.tokenizer, file), join(dir, file));
        if (f.chatTemplateFile) copyFileSync(join(sourceDir, "models", f.chatTemplateFile), join(dir, "chat_template.jinja"));
        server = await startServer(["--set", `model.path=${dir}`, "--set", "model.chat_template=auto", "--set", "model.name=tiny"]);
        client = new OpenAI({ baseURL: `${server.baseURL}/v1`, apiKey: "unused", maxRetries: 0, timeout: 60000 });
      });
      after(async () => {
        await server?.stop();
      });

      const messages = [
        { role: "system", content: "You are a terse assistant." },
        { role: "user", content: "Say hi in three words, with an emoji 🙂." },
      ];

      it("streams a chat reply that ends at the end-of-turn token with finish_reason stop", async () => {
        // The weights are random: a bias makes the end-of-turn token the model's choice after two tokens of text.
        for (const eos of [f.endOfTurn, f.otherEos]) {
          const stream = await client.chat.completions.create({
            model: "tiny", messages, stream: true, stream_options: { include_usage: true }, max_tokens: 8,
            temperature: 0, logit_bias: { [eos]: 100 },
          });
          let content = "";
          let finish = null;
          let usage = null;
          for await (const chunk of stream) {
            if (chunk.usage) usage = chunk.usage;
            for (const c of chunk.choices) {
              content += c.delta?.content ?? "";
              if (c.finish_reason) finish = c.finish_reason;
            }
          }
          assert.equal(finish, "stop", `eos ${eos}`);
          assert.equal(content, "", "the end-of-turn token is never emitted");
          assert.equal(usage.completion_tokens, 1);
          // The same request without the bias runs to max_tokens: the stop above came from the eos id.
          const plain = await client.chat.completions.create({
            model: "tiny", messages, max_tokens: 4, temperature: 0, logit_bias: { [eos]: -100, [f.endOfTurn]: -100, [f.otherEos]: -100 },
          });
          assert.equal(plain.choices[0].finish_reason, "length");
          assert.equal(plain.usage.completion_tokens, 4);
        }
      });

      it("counts the prompt as /tokenize renders the same messages", async () => {
        const completion = await client.chat.completions.create({
          model: "tiny", messages, max_tokens: 1, temperature: 0,
        });
        const res = await fetch(`${server.baseURL}/tokenize`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: "tiny", messages, add_generation_prompt: true }),
        });
        assert.equal(res.status, 200);
        const tok = await res.json();
        assert.equal(completion.usage.prompt_tokens, tok.count);
        assert.deepEqual(tok.tokens.slice(0, f.firstTokens.length), f.firstTokens);
        // Special tokens rendered by the template are single ids, never spelled out as text.
        assert.ok(tok.tokens.includes(f.endOfTurn), "the system turn ends with the end-of-turn id");
        const text = await (await fetch(`${server.baseURL}/detokenize`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: "tiny", tokens: tok.tokens.filter((t) => t < f.config.vocab_size) }),
        })).json();
        assert.ok(text.prompt.includes("Say hi in three words, with an emoji 🙂."), text.prompt);
        assert.ok(text.prompt.includes(f.templateText), text.prompt);
      });
    });
  }
});
