// Reference tokenizer for tests/engine/hf_tokenizer_test.cc: Hugging Face's own JavaScript port of
// `tokenizers` (@huggingface/tokenizers, pinned in tests/integration/package.json).
//
//   node hf_tokenize.mjs INTEGRATION_DIR TOKENIZER_DIR REQUEST.json
//
// REQUEST: {"texts": [...], "decode": [[ids], ...]}. Prints one JSON object:
//   {"plain": [[ids]...], "special": [[ids]...],          encode(text, add_special_tokens false / true)
//    "decoded": [text...], "decoded_special": [text...]}   decode(ids, skip_special_tokens true / false)
// Decoding never cleans up spaces (clean_up_tokenization_spaces: false), as the engine does not.
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [integrationDir, tokenizerDir, requestPath] = process.argv.slice(2);
const entry = resolve(integrationDir, "node_modules", "@huggingface", "tokenizers");
const pkg = JSON.parse(readFileSync(join(entry, "package.json"), "utf8"));
const { Tokenizer } = await import(pathToFileURL(join(entry, pkg.module)).href);

const readJson = (name) => JSON.parse(readFileSync(join(tokenizerDir, name), "utf8"));
const tokenizer = new Tokenizer(readJson("tokenizer.json"), readJson("tokenizer_config.json"));
const request = JSON.parse(readFileSync(requestPath, "utf8"));

const encode = (text, special) => tokenizer.encode(text, { add_special_tokens: special }).ids;
const decode = (ids, skip) =>
  ids.length === 0 ? "" : tokenizer.decode(ids, { skip_special_tokens: skip, clean_up_tokenization_spaces: false });
const texts = request.texts ?? [];
const toDecode = request.decode ?? [];
process.stdout.write(
  JSON.stringify({
    plain: texts.map((t) => encode(t, false)),
    special: texts.map((t) => encode(t, true)),
    decoded: toDecode.map((ids) => decode(ids, true)),
    decoded_special: toDecode.map((ids) => decode(ids, false)),
  }),
);
