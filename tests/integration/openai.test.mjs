// The official `openai` npm client against the real server and the default model (stories15M).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";

import { startServer } from "./lib/harness.mjs";

const KEY = "sk-integration-test";
let server;
let client;

before(async () => {
  server = await startServer(["--set", `server.api_keys=[${KEY}]`]);
  client = new OpenAI({ baseURL: `${server.baseURL}/v1`, apiKey: KEY, maxRetries: 0, timeout: 60000 });
});

after(async () => {
  const { code } = await server.stop();
  assert.equal(code, 0);
});

const PROMPT = "Once upon a time";

describe("completions", () => {
  it("returns text and usage", async () => {
    const c = await client.completions.create({ model: server.model, prompt: PROMPT, max_tokens: 8, temperature: 0 });
    assert.equal(c.object, "text_completion");
    assert.equal(c.model, "stories15M");
    assert.equal(c.choices.length, 1);
    assert.ok(c.choices[0].text.length > 0);
    assert.ok(["length", "stop"].includes(c.choices[0].finish_reason));
    assert.equal(c.usage.prompt_tokens, 5); // BOS + 4 tokens
    assert.equal(c.usage.total_tokens, c.usage.prompt_tokens + c.usage.completion_tokens);
    assert.ok(c.usage.completion_tokens <= 8);
  });

  it("streams the same greedy text, with usage last", async () => {
    const full = await client.completions.create({ model: server.model, prompt: PROMPT, max_tokens: 8, temperature: 0 });
    const stream = await client.completions.create({
      model: server.model,
      prompt: PROMPT,
      max_tokens: 8,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let usage;
    let finish;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const ch of chunk.choices) {
        text += ch.text;
        if (ch.finish_reason) finish = ch.finish_reason;
      }
    }
    assert.equal(text, full.choices[0].text);
    assert.equal(finish, full.choices[0].finish_reason);
    assert.deepEqual(usage.completion_tokens, full.usage.completion_tokens);
  });

  it("n > 1 gives n choices; a seed makes sampling reproducible", async () => {
    const req = { model: server.model, prompt: PROMPT, max_tokens: 6, temperature: 1.0, n: 3, seed: 1234 };
    const a = await client.completions.create(req);
    const b = await client.completions.create(req);
    assert.equal(a.choices.length, 3);
    assert.deepEqual(
      a.choices.map((c) => c.index),
      [0, 1, 2],
    );
    assert.deepEqual(
      a.choices.map((c) => c.text),
      b.choices.map((c) => c.text),
    );
    assert.ok(a.usage.completion_tokens > 0 && a.usage.completion_tokens <= 3 * 6);
  });

  it("stop strings end the text and are not emitted", async () => {
    const free = await client.completions.create({ model: server.model, prompt: PROMPT, max_tokens: 16, temperature: 0 });
    const text = free.choices[0].text;
    // Stop at the second word of the greedy continuation.
    const words = text.trim().split(/\s+/);
    assert.ok(words.length >= 3, text);
    const stop = ` ${words[2]}`;
    const cut = await client.completions.create({
      model: server.model,
      prompt: PROMPT,
      max_tokens: 16,
      temperature: 0,
      stop: [stop, "zzzz-never"],
    });
    assert.equal(cut.choices[0].finish_reason, "stop");
    assert.equal(cut.choices[0].text, text.slice(0, text.indexOf(stop)));
    assert.ok(!cut.choices[0].text.includes(stop));
  });

  it("logprobs: the chosen token's and the top-k", async () => {
    const c = await client.completions.create({
      model: server.model,
      prompt: PROMPT,
      max_tokens: 4,
      temperature: 0,
      logprobs: 3,
    });
    const lp = c.choices[0].logprobs;
    assert.equal(lp.tokens.length, c.usage.completion_tokens);
    assert.equal(lp.token_logprobs.length, lp.tokens.length);
    for (let i = 0; i < lp.tokens.length; ++i) {
      assert.ok(lp.token_logprobs[i] <= 0);
      const top = lp.top_logprobs[i];
      assert.ok(Object.keys(top).length >= 1 && Object.keys(top).length <= 3);
      // Greedy: the chosen token is the most likely one.
      assert.ok(Math.abs(Math.max(...Object.values(top)) - lp.token_logprobs[i]) < 1e-4);
    }
    assert.equal(lp.tokens.join(""), c.choices[0].text);
  });

  it("echo prepends the prompt", async () => {
    const c = await client.completions.create({ model: server.model, prompt: PROMPT, max_tokens: 3, echo: true });
    assert.ok(c.choices[0].text.startsWith(PROMPT));
  });
});

describe("chat", () => {
  const messages = [{ role: "user", content: PROMPT }];

  it("answers with the plain template and usage", async () => {
    const c = await client.chat.completions.create({ model: server.model, messages, max_tokens: 8, temperature: 0 });
    assert.equal(c.object, "chat.completion");
    assert.equal(c.choices[0].message.role, "assistant");
    assert.ok(c.choices[0].message.content.length > 0);
    assert.ok(c.usage.prompt_tokens > 0);
    assert.equal(c.usage.total_tokens, c.usage.prompt_tokens + c.usage.completion_tokens);
    assert.equal(typeof c.usage.prompt_tokens_details.cached_tokens, "number");
    // The plain template renders a single user message as its text: same as the completion.
    const t = await client.completions.create({ model: server.model, prompt: PROMPT, max_tokens: 8, temperature: 0 });
    assert.equal(c.choices[0].message.content, t.choices[0].text);
  });

  it("streams deltas, n > 1, with max_completion_tokens and usage", async () => {
    const stream = await client.chat.completions.create({
      model: server.model,
      messages,
      max_completion_tokens: 6,
      temperature: 0.8,
      seed: 7,
      n: 2,
      stream: true,
      stream_options: { include_usage: true },
    });
    const texts = ["", ""];
    const roles = [];
    const finish = [];
    let usage;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const ch of chunk.choices) {
        if (ch.delta.role) roles[ch.index] = ch.delta.role;
        if (ch.delta.content) texts[ch.index] += ch.delta.content;
        if (ch.finish_reason) finish[ch.index] = ch.finish_reason;
      }
    }
    assert.deepEqual(roles, ["assistant", "assistant"]);
    assert.equal(finish.length, 2);
    assert.ok(texts[0].length > 0 && texts[1].length > 0);
    assert.ok(usage.completion_tokens <= 12);
  });

  it("logprobs and top_logprobs", async () => {
    const c = await client.chat.completions.create({
      model: server.model,
      messages,
      max_tokens: 4,
      temperature: 0,
      logprobs: true,
      top_logprobs: 2,
    });
    const content = c.choices[0].logprobs.content;
    assert.equal(content.length, c.usage.completion_tokens);
    for (const entry of content) {
      assert.equal(typeof entry.token, "string");
      assert.ok(entry.logprob <= 0);
      assert.ok(Array.isArray(entry.bytes));
      assert.equal(entry.top_logprobs.length, 2);
    }
  });
});

describe("models and errors", () => {
  it("lists the model", async () => {
    const models = await client.models.list();
    assert.deepEqual(
      models.data.map((m) => m.id),
      ["stories15M"],
    );
  });

  it("400 context_length_exceeded names the prompt length and the limit", async () => {
    const long = "once upon a time ".repeat(100);
    await assert.rejects(client.completions.create({ model: server.model, prompt: long, max_tokens: 4 }), (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError, e.constructor.name);
      assert.equal(e.status, 400);
      assert.equal(e.code, "context_length_exceeded");
      assert.equal(e.param, "prompt");
      assert.match(e.message, /maximum context length is 256 tokens/);
      const prompt = Number(e.message.match(/resulted in (\d+) tokens/)[1]);
      assert.ok(prompt > 256, e.message);
      return true;
    });
  });

  it("400 with param for a wrong type", async () => {
    await assert.rejects(
      client.completions.create({ model: server.model, prompt: PROMPT, temperature: "warm" }),
      (e) => e instanceof OpenAI.BadRequestError && e.param === "temperature",
    );
  });

  it("401 for a wrong key", async () => {
    const bad = new OpenAI({ baseURL: `${server.baseURL}/v1`, apiKey: "sk-wrong", maxRetries: 0 });
    await assert.rejects(bad.models.list(), (e) => {
      assert.ok(e instanceof OpenAI.AuthenticationError, e.constructor.name);
      assert.equal(e.status, 401);
      return true;
    });
  });

  it("404 for an unknown model", async () => {
    await assert.rejects(client.completions.create({ model: "gpt-4o", prompt: PROMPT, max_tokens: 2 }), (e) => {
      assert.ok(e instanceof OpenAI.NotFoundError, e.constructor.name);
      assert.equal(e.code, "model_not_found");
      return true;
    });
  });
});
