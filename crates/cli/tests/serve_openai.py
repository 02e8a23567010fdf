"""The real `openai` client against `llmem serve`.

Usage: serve_openai.py BASE_URL API_KEY [TOOLS_BASE_URL]

Each check prints one line; the script exits non-zero when any fails. Run by
crates/cli/tests/serve.rs, which starts the server (and, where Qwen2.5 is present, a
second one on it at TOOLS_BASE_URL for the tool-call round trip).
"""

import json
import sys
import traceback

import urllib.error
import urllib.request

import jsonschema
import openai

BASE, KEY = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=120)
MSG = [{"role": "user", "content": "Name three colors."}]
results = []


def check(fn):
    try:
        fn()
        results.append((fn.__name__, None))
        print(f"ok   {fn.__name__}", flush=True)
    except Exception:  # noqa: BLE001 - every failure is reported, then the next check runs
        results.append((fn.__name__, traceback.format_exc()))
        print(f"FAIL {fn.__name__}\n{traceback.format_exc()}", flush=True)
    return fn


@check
def models_lists_the_model():
    ids = [m.id for m in client.models.list().data]
    assert len(ids) == 1 and ids[0], ids


@check
def chat_completion():
    r = client.chat.completions.create(model="m", messages=MSG, max_tokens=24, temperature=0)
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content, r
    assert c.finish_reason in ("stop", "length"), c.finish_reason
    u = r.usage
    assert u.prompt_tokens > 5 and 0 < u.completion_tokens <= 24, u
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u
    assert u.prompt_tokens_details.cached_tokens is not None, u


@check
def completion():
    r = client.completions.create(model="m", prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.choices[0].text and r.choices[0].finish_reason == "length", r
    assert r.usage.completion_tokens == 8, r.usage


@check
def streaming_with_usage_matches_the_whole_answer():
    whole = client.chat.completions.create(model="m", messages=MSG, max_tokens=20, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=MSG,
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content, (text, whole)
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == whole.usage.completion_tokens, last
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


@check
def streaming_completions():
    chunks = list(client.completions.create(model="m", prompt="Once upon a time", max_tokens=6, stream=True, temperature=0))
    assert "".join(c.choices[0].text for c in chunks if c.choices), chunks


@check
def n_choices():
    r = client.chat.completions.create(model="m", messages=MSG, max_tokens=8, temperature=1.0, n=3, seed=5)
    assert sorted(c.index for c in r.choices) == [0, 1, 2], r
    assert all(c.message.content is not None for c in r.choices)


@check
def stop_strings_are_not_sent():
    base = client.completions.create(model="m", prompt="1, 2, 3, 4, 5,", max_tokens=16, temperature=0)
    text = base.choices[0].text
    assert len(text) > 4, text
    stop = text[2:4]
    r = client.completions.create(model="m", prompt="1, 2, 3, 4, 5,", max_tokens=16, temperature=0, stop=[stop])
    got = r.choices[0].text
    assert stop not in got and got == text[: text.find(stop)], (text, stop, got)
    assert r.choices[0].finish_reason == "stop"


@check
def seeds_reproduce():
    args = dict(model="m", messages=MSG, max_tokens=16, temperature=1.0, seed=1234)
    a = client.chat.completions.create(**args).choices[0].message.content
    b = client.chat.completions.create(**args).choices[0].message.content
    assert a == b, (a, b)


@check
def logprobs():
    r = client.chat.completions.create(model="m", messages=MSG, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert content and len(content) <= 6
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        # Greedy: the token taken is the most likely one.
        assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4, t
    joined = "".join(t.token for t in content)
    assert r.choices[0].message.content.startswith(joined[:3]), (joined, r.choices[0].message.content)


@check
def json_schema_output_validates():
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "pets": {"type": "array", "items": {"type": "string"}},
            "kind": {"enum": ["cat", "dog", "bird"]},
            "happy": {"type": "boolean"},
        },
        "required": ["name", "age", "pets", "kind", "happy"],
    }
    # Too few tokens for the schema's shortest document: refused, never cut short.
    try:
        client.chat.completions.create(
            model="m",
            messages=MSG,
            max_tokens=12,
            response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
        )
        raise AssertionError("12 tokens accepted for a longer schema")
    except openai.BadRequestError as e:
        assert e.body["param"] == "max_tokens", e.body
    # Enough for its shortest document but not for what the model wants to write: the
    # grammar closes it in time.
    for max_tokens in (200, 64):
        r = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "Describe a person as JSON."}],
            max_tokens=max_tokens,
            temperature=0.7,
            seed=3,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        )
        doc = json.loads(r.choices[0].message.content)
        jsonschema.validate(doc, schema)


@check
def json_object_output_parses():
    r = client.chat.completions.create(
        model="m", messages=MSG, max_tokens=40, temperature=0, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(r.choices[0].message.content), dict)


@check
def wrong_key_is_401():
    bad = openai.OpenAI(base_url=BASE + "/v1", api_key="wrong", max_retries=0)
    try:
        bad.models.list()
    except openai.AuthenticationError as e:
        assert e.status_code == 401 and e.body["code"] == "invalid_api_key", e.body
        return
    raise AssertionError("no 401")


@check
def over_long_prompt_is_400():
    try:
        client.completions.create(model="m", prompt="hello " * 3000, max_tokens=4)
    except openai.BadRequestError as e:
        assert e.body["code"] == "context_length_exceeded", e.body
        assert "never truncated" in e.body["message"], e.body
        return
    raise AssertionError("no 400")


@check
def error_shapes():
    for bad in (dict(temperature=-1), dict(n=100), dict(top_logprobs=99, logprobs=True)):
        try:
            client.chat.completions.create(model="m", messages=MSG, max_tokens=4, **bad)
        except openai.BadRequestError as e:
            assert set(e.body) >= {"message", "type", "param", "code"}, e.body
            assert e.body["type"] == "invalid_request_error", e.body
            continue
        raise AssertionError(f"no 400 for {bad}")
    req = urllib.request.Request(
        BASE + "/v1/chat/completions", data=b"{not json", headers={"Authorization": f"Bearer {KEY}"}
    )
    try:
        urllib.request.urlopen(req, timeout=30)
    except urllib.error.HTTPError as e:
        body = json.loads(e.read())
        assert e.code == 400 and set(body["error"]) == {"message", "type", "param", "code"}, body
        return
    raise AssertionError("no 400 for a body that is not JSON")


@check
def embeddings_float_and_base64_agree_and_are_normalised():
    import math

    texts = ["The cat sat on the mat.", "Quarterly revenue grew by twelve percent."]
    f = client.embeddings.create(model="m", input=texts, encoding_format="float")
    assert [d.index for d in f.data] == [0, 1], f
    assert f.usage.prompt_tokens > 0 and f.usage.total_tokens == f.usage.prompt_tokens, f.usage
    a, b = f.data[0].embedding, f.data[1].embedding
    assert len(a) == len(b) > 0
    dot = lambda x, y: sum(p * q for p, q in zip(x, y))  # noqa: E731
    assert abs(dot(a, a) - 1) < 1e-4, dot(a, a)
    assert dot(a, b) < 0.99, dot(a, b)
    # Unasked, the client requests base64 and decodes it (little-endian f32) itself.
    auto = client.embeddings.create(model="m", input=texts[0])
    assert max(abs(p - q) for p, q in zip(auto.data[0].embedding, a)) < 1e-6
    # Asked, it hands the string back as it came.
    import base64
    import struct

    raw = client.embeddings.create(model="m", input=texts[0], encoding_format="base64")
    s = raw.data[0].embedding
    assert isinstance(s, str), type(s)
    dec = struct.unpack(f"<{len(a)}f", base64.b64decode(s))
    assert max(abs(p - q) for p, q in zip(dec, a)) < 1e-6
    # A text alone equals the same text in a batch; token ids are taken too.
    one = client.embeddings.create(model="m", input=texts[1]).data[0].embedding
    assert max(abs(p - q) for p, q in zip(one, b)) < 1e-6
    ids = client.embeddings.create(model="m", input=[[1, 2, 3], [4, 5]])
    assert len(ids.data) == 2 and ids.usage.prompt_tokens == 5, ids.usage
    assert all(math.isfinite(x) for x in ids.data[1].embedding)


@check
def embeddings_refuse_empty_and_overlong_input():
    for bad in ("", [], [""], "word " * 5000):
        try:
            client.embeddings.create(model="m", input=bad)
        except openai.BadRequestError as e:
            assert e.body["param"] == "input", e.body
            continue
        raise AssertionError(f"no 400 for {str(bad)[:20]!r}")


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
            "additionalProperties": False,
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@check
def tools_are_refused_by_a_model_without_tool_support():
    try:
        client.chat.completions.create(model="m", messages=ASK_WEATHER, tools=[WEATHER], max_tokens=8)
    except openai.BadRequestError as e:
        assert "no tool support" in e.body["message"], e.body
        return
    raise AssertionError("no 400 for tools on a template without them")


if len(sys.argv) > 3:
    tools = openai.OpenAI(base_url=sys.argv[3] + "/v1", api_key=KEY, max_retries=0, timeout=300)

    @check
    def tool_call_round_trip():
        r = tools.chat.completions.create(
            model="m", messages=ASK_WEATHER, tools=[WEATHER], tool_choice="required",
            temperature=0, max_tokens=128,
        )
        c = r.choices[0]
        assert c.finish_reason == "tool_calls", c
        call = c.message.tool_calls[0]
        assert call.type == "function" and call.function.name == "get_weather", call
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
        # The call and its result go back; the model answers in text.
        msgs = ASK_WEATHER + [
            c.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "sunny"}'},
        ]
        r = tools.chat.completions.create(model="m", messages=msgs, tools=[WEATHER], temperature=0, max_tokens=32)
        assert r.choices[0].message.content and not r.choices[0].message.tool_calls, r

    @check
    def streamed_tool_call_accumulates():
        named = {"type": "function", "function": {"name": "get_weather"}}
        calls = {}
        finish = None
        for chunk in tools.chat.completions.create(
            model="m", messages=ASK_WEATHER, tools=[WEATHER], tool_choice=named,
            temperature=0, max_tokens=128, stream=True,
        ):
            for ch in chunk.choices:
                for t in ch.delta.tool_calls or []:
                    got = calls.setdefault(t.index, {"name": "", "arguments": ""})
                    got["name"] += t.function.name or ""
                    got["arguments"] += t.function.arguments or ""
                finish = ch.finish_reason or finish
        assert finish == "tool_calls" and list(calls) == [0], (finish, calls)
        assert calls[0]["name"] == "get_weather", calls
        jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER["function"]["parameters"])


failed = [n for n, e in results if e]
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
