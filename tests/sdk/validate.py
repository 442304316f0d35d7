"""The vendors' own SDK types as the judges of what selfagent sends and what the scripted
model server answers (tests/common/sdk.rs starts this once per test run).

A small server on a Unix socket: each connection sends one JSON line
{"api": API, "kind": "request" | "reply", "body": {...}} and reads one JSON line back,
{"ok": true, "body": ...} or {"ok": false, "error": "..."}.

- request: `body` must be a request the SDK's request types accept, strictly: every key
  known to the type (TypedDicts are walked here, since Python does not check them; Gemini's
  pydantic models forbid unknown fields themselves), every required key present, every
  literal one of its values.
- reply: `body` must parse as the SDK's response type; the answer is the SDK's own
  serialization of it, which the scripted server sends (so its replies are built from the
  vendors' response types).

APIs: anthropic (Messages, beta types), openai-chat (Chat Completions), openai-responses
(Responses), gemini (generateContent, REST field names).

The server exits after --idle seconds without a connection.
"""

import argparse
import json
import os
import socket
import socketserver
import sys
import threading
import time
import types
import typing

import typing_extensions

LAST = [time.monotonic()]


class Invalid(Exception):
    pass


def _strip(tp):
    """Required[X], NotRequired[X], ReadOnly[X] and Annotated[X, ...] -> X."""
    while True:
        origin = typing.get_origin(tp)
        if origin in (
            typing_extensions.Required,
            typing_extensions.NotRequired,
            typing.Required,
            typing.NotRequired,
        ) or (origin is typing.Annotated):
            tp = typing.get_args(tp)[0]
            continue
        if getattr(typing_extensions, "ReadOnly", None) is not None and origin is typing_extensions.ReadOnly:
            tp = typing.get_args(tp)[0]
            continue
        return tp


def _is_typeddict(tp):
    return isinstance(tp, type) and (
        typing_extensions.is_typeddict(tp) or typing.is_typeddict(tp)
    )


_HINTS = {}


def _hints(tp):
    if tp not in _HINTS:
        _HINTS[tp] = typing.get_type_hints(tp, include_extras=True)
    return _HINTS[tp]


def check(value, tp, path="$"):
    """Raises Invalid when `value` is not a `tp` (strictly, for TypedDicts)."""
    tp = _strip(tp)
    if tp is typing.Any or tp is object:
        return
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_typeddict(tp):
        if not isinstance(value, dict):
            raise Invalid(f"{path}: expected an object ({tp.__name__}), got {type(value).__name__}")
        hints = _hints(tp)
        for key in tp.__required_keys__:
            if key not in value:
                raise Invalid(f"{path}: {tp.__name__} needs `{key}`")
        for key, item in value.items():
            if key not in hints:
                raise Invalid(f"{path}: {tp.__name__} has no field `{key}`")
            check(item, hints[key], f"{path}.{key}")
        return
    if origin in (typing.Union, types.UnionType):
        errors = []
        for alt in args:
            try:
                check(value, alt, path)
                return
            except Invalid as e:
                errors.append((alt, str(e)))
        # The alternative whose `type` literal the value names is the one it meant.
        if isinstance(value, dict) and "type" in value:
            for alt, error in errors:
                alt = _strip(alt)
                if _is_typeddict(alt):
                    lit = _strip(_hints(alt).get("type", object))
                    if typing.get_origin(lit) in (typing.Literal, typing_extensions.Literal) and value["type"] in typing.get_args(lit):
                        raise Invalid(error)
        if len(errors) == 1:
            raise Invalid(errors[0][1])
        closest = max(errors, key=lambda e: len(e[1]))[1]
        raise Invalid(f"{path}: no alternative fits; closest: {closest}")
    if origin in (typing.Literal, typing_extensions.Literal):
        if value not in args:
            raise Invalid(f"{path}: {value!r} is not one of {list(args)}")
        return
    if tp is type(None):
        if value is not None:
            raise Invalid(f"{path}: expected null")
        return
    if tp is str:
        if not isinstance(value, str):
            raise Invalid(f"{path}: expected a string, got {type(value).__name__}")
        return
    if tp is bool:
        if not isinstance(value, bool):
            raise Invalid(f"{path}: expected a boolean")
        return
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"{path}: expected an integer, got {value!r}")
        return
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"{path}: expected a number, got {value!r}")
        return
    if origin in (list, tuple, set, frozenset) or (
        origin is not None and getattr(origin, "__name__", "") in ("Iterable", "Sequence", "List", "SequenceNotStr")
    ):
        if not isinstance(value, list):
            raise Invalid(f"{path}: expected a list, got {type(value).__name__}")
        inner = args[0] if args else typing.Any
        for i, item in enumerate(value):
            check(item, inner, f"{path}[{i}]")
        return
    if origin in (dict,) or (origin is not None and getattr(origin, "__name__", "") in ("Mapping", "Dict")):
        if not isinstance(value, dict):
            raise Invalid(f"{path}: expected an object")
        inner = args[1] if len(args) == 2 else typing.Any
        for k, item in value.items():
            check(item, inner, f"{path}.{k}")
        return
    if isinstance(tp, typing.TypeVar):
        return
    # Anything else (a class the params do not use as JSON): not ours to judge.
    return


def anthropic_request(body):
    from anthropic.types.beta.message_create_params import MessageCreateParamsNonStreaming

    check(body, MessageCreateParamsNonStreaming)


def anthropic_reply(body):
    from anthropic.types.beta import BetaMessage

    return BetaMessage.model_validate_json(json.dumps(body)).model_dump(
        mode="json", exclude_unset=True, by_alias=True
    )


def openai_chat_request(body):
    from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming

    check(body, CompletionCreateParamsNonStreaming)


def openai_chat_reply(body):
    from openai.types.chat import ChatCompletion

    return ChatCompletion.model_validate_json(json.dumps(body)).model_dump(
        mode="json", exclude_unset=True
    )


def openai_responses_request(body):
    from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming

    check(body, ResponseCreateParamsNonStreaming)


def openai_responses_reply(body):
    from openai.types.responses import Response

    # The scripted replies leave out what no client reads (created_at, tools, …): fill the
    # Response type's required fields the way the API does before parsing.
    full = {
        "created_at": 0,
        "model": "scripted",
        "object": "response",
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
        **body,
    }
    return Response.model_validate_json(json.dumps(full)).model_dump(mode="json", exclude_unset=True)


# generateContent's REST body: each field and the SDK type of its value.
def _gemini_fields():
    from google.genai import types as t

    return {
        "contents": list[t.Content],
        "systemInstruction": t.Content,
        "tools": list[t.Tool],
        "toolConfig": t.ToolConfig,
        "generationConfig": t.GenerationConfig,
        "safetySettings": list[t.SafetySetting],
        "cachedContent": str,
    }


def gemini_request(body):
    import pydantic

    if not isinstance(body, dict):
        raise Invalid("$: expected an object")
    fields = _gemini_fields()
    for key, value in body.items():
        if key not in fields:
            raise Invalid(f"$: generateContent's body has no field `{key}`")
        try:
            pydantic.TypeAdapter(fields[key]).validate_json(json.dumps(value))
        except pydantic.ValidationError as e:
            raise Invalid(f"$.{key}: {e}")
    if "contents" not in body:
        raise Invalid("$: generateContent needs `contents`")


def gemini_reply(body):
    from google.genai import types as t

    r = t.GenerateContentResponse.model_validate_json(json.dumps(body))
    return r.model_dump(mode="json", exclude_unset=True, by_alias=True)


HANDLERS = {
    ("anthropic", "request"): anthropic_request,
    ("anthropic", "reply"): anthropic_reply,
    ("openai-chat", "request"): openai_chat_request,
    ("openai-chat", "reply"): openai_chat_reply,
    ("openai-responses", "request"): openai_responses_request,
    ("openai-responses", "reply"): openai_responses_reply,
    ("gemini", "request"): gemini_request,
    ("gemini", "reply"): gemini_reply,
}


def judge(message):
    handler = HANDLERS.get((message.get("api"), message.get("kind")))
    if handler is None:
        return {"ok": False, "error": f"nothing judges {message.get('api')!r} {message.get('kind')!r}"}
    try:
        out = handler(message.get("body"))
        return {"ok": True, "body": out if out is not None else message.get("body")}
    except Invalid as e:
        return {"ok": False, "error": str(e)[:4000]}
    except Exception as e:  # pydantic's ValidationError and the like
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:4000]}


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        LAST[0] = time.monotonic()
        line = self.rfile.readline()
        try:
            message = json.loads(line)
            answer = judge(message)
        except json.JSONDecodeError as e:
            answer = {"ok": False, "error": f"not JSON: {e}"}
        self.wfile.write(json.dumps(answer).encode() + b"\n")
        LAST[0] = time.monotonic()


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--idle", type=float, default=600)
    p.add_argument("--check", help="judge one JSON message from this file and exit")
    a = p.parse_args()
    if a.check:
        with open(a.check) as f:
            print(json.dumps(judge(json.load(f))))
        return
    # Import the SDKs now: the first judgement should not pay for it.
    for api in ("anthropic", "openai-chat", "openai-responses", "gemini"):
        judge({"api": api, "kind": "request", "body": {}})
    tmp = f"{a.socket}.{os.getpid()}"
    if os.path.exists(tmp):
        os.unlink(tmp)
    server = Server(tmp, Handler)
    # Appears only once it serves: a client that finds the socket can use it.
    os.replace(tmp, a.socket)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    while time.monotonic() - LAST[0] < a.idle:
        time.sleep(1)
    try:
        os.unlink(a.socket)
    except OSError:
        pass


if __name__ == "__main__":
    main()
