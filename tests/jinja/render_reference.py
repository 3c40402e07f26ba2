#!/usr/bin/env python3
"""Reference renderer for the Jinja differential tests (tests/jinja/jinja_test.cc).

Renders chat templates the way Hugging Face transformers does (apply_chat_template): an
ImmutableSandboxedEnvironment with trim_blocks=True, lstrip_blocks=True and the loopcontrols extension,
transformers' `generation` block (renders its body), `tojson` replaced by json.dumps with ensure_ascii=False,
and the globals raise_exception and strftime_now. strftime_now uses the fixed time given in the input, so
that both renderers see the same clock.

  render_reference.py < cases.json > results.json
    input:  {"now": "2024-07-26T09:05:03", "cases": [{"template": "...", "context": {...}}, ...]}
    output: [{"output": "..."} | {"error": "...", "kind": "raised" | "syntax" | "runtime"}, ...]
  render_reference.py --extract-llama-cpp test-chat-template.cpp
    prints {"name": "template", ...}: the templates quoted as C string literals in llama.cpp's
    tests/test-chat-template.cpp (model metadata published by the models' authors).
"""
import datetime
import json
import re
import sys

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class _Raised(Exception):
    pass


class GenerationBlock(jinja2.ext.Extension):
    """transformers' AssistantTracker without the index tracking: {% generation %} renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def make_env(now):
    def raise_exception(message):
        raise _Raised(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return now.strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render_all(request):
    now = datetime.datetime.fromisoformat(request.get("now", "2024-07-26T09:05:03"))
    env = make_env(now)
    compiled = {}
    results = []
    for case in request["cases"]:
        source = case["template"]
        try:
            if source not in compiled:
                try:
                    compiled[source] = env.from_string(source)
                except Exception as e:  # noqa: BLE001 - any compile failure is a syntax error here
                    compiled[source] = e
            template = compiled[source]
            if isinstance(template, Exception):
                results.append({"error": f"{type(template).__name__}: {template}", "kind": "syntax"})
                continue
            results.append({"output": template.render(**case["context"])})
        except _Raised as e:
            results.append({"error": str(e), "kind": "raised"})
        except Exception as e:  # noqa: BLE001 - the test only needs to know that rendering failed
            results.append({"error": f"{type(e).__name__}: {e}", "kind": "runtime"})
    return results


def c_string_literal(text):
    """Decodes the body of a C/C++ string literal (the escapes test-chat-template.cpp uses)."""
    out = []
    i = 0
    simple = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "'": "'", "\\": "\\", "0": "\0"}
    while i < len(text):
        c = text[i]
        if c == "\\":
            n = text[i + 1]
            if n in simple:
                out.append(simple[n])
                i += 2
                continue
            raise ValueError(f"unsupported escape \\{n}")
        out.append(c)
        i += 1
    return "".join(out)


def extract_llama_cpp(path):
    source = open(path, encoding="utf-8").read()
    literal = r'(?:U8C\(|u8)?"((?:[^"\\]|\\.)*)"\)?'
    pattern = re.compile(
        r"/\* \.name= \*/\s*" + literal + r".*?/\* \.template_str=? \*/\s*" + literal, re.S
    )
    templates = {}
    for m in pattern.finditer(source):
        templates[c_string_literal(m.group(1))] = c_string_literal(m.group(2))
    return templates


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--extract-llama-cpp":
        json.dump(extract_llama_cpp(sys.argv[2]), sys.stdout, ensure_ascii=False)
        return
    request = json.load(sys.stdin)
    json.dump(render_all(request), sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
