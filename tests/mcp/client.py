"""A real MCP client of `selfagent mcp`: the official MCP Python SDK (PyPI `mcp`), driven
by tests/suite/mcp.rs. Each scenario does what a host would and prints one JSON object of
what it saw on stdout; the Rust test asserts on it (and on Docker and the recording).

    client.py stdio SELFAGENT DB [ARGS...]        the tools end to end over stdio
    client.py http URL TOKEN                      the tools over streamable HTTP
    client.py refused URL                         requests without or with a wrong token
    client.py legacy URL TOKEN                    an HTTP session (initialize handshake) that ends
    client.py run_task SELFAGENT DB BASE_URL      run_task with progress notifications
    client.py cancel SELFAGENT DB BASE_URL        run_task cancelled after its first step
    client.py limits SELFAGENT DB                 --max-desktops, --idle-timeout, a desktop that dies
"""

import asyncio
import base64
import json
import os
import struct
import sys
import time

import anyio
import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client


def png_size(data: bytes):
    """(width, height) of a PNG, from its IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def texts(result):
    return "\n".join(c.text for c in result.content if c.type == "text")


def images(result):
    return [base64.b64decode(c.data) for c in result.content if c.type == "image"]


def stdio_server(selfagent, db, *extra):
    env = dict(os.environ)
    env.setdefault("SELFAGENT_LOG", "info,vnc=off")
    return StdioServerParameters(
        command=selfagent, args=["mcp", "--db", db, *extra], env=env
    )


async def until(what, check, timeout=60.0):
    """Waits for `check()` (async) to be truthy; evidence, not time."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def drive(client, seen):
    """The tools on one desktop: what a host does. Fills `seen`."""
    tools = await client.list_tools()
    seen["tools"] = sorted(t.name for t in tools.tools)
    seen["schemas_described"] = all(
        all("description" in p for p in (t.input_schema.get("properties") or {}).values())
        for t in tools.tools
    )
    up = await client.call_tool("sandbox_up", {"instruction": "type into a terminal"})
    assert not up.is_error, texts(up)
    desk = up.structured_content
    seen["up"] = desk
    sid = desk["sandbox"]

    shot = await client.call_tool("screenshot", {"sandbox": sid})
    assert not shot.is_error, texts(shot)
    seen["screenshot"] = png_size(images(shot)[0])
    small = await client.call_tool("screenshot", {"sandbox": sid, "scale": 0.5})
    seen["screenshot_half"] = png_size(images(small)[0])
    seen["screenshot_half_text"] = texts(small)

    launched = await client.call_tool("computer", {"sandbox": sid, "action": "launch", "app": "terminal"})
    assert not launched.is_error, texts(launched)
    win = await client.call_tool(
        "wait_window", {"sandbox": sid, "class": "(?i)term", "timeout": 60}
    )
    assert not win.is_error, texts(win)
    seen["window"] = win.structured_content["window"]
    term = seen["window"]["id"]

    async def focused():
        r = await client.call_tool("windows", {"sandbox": sid})
        return any(w["id"] == term and w["active"] for w in r.structured_content["windows"])

    await until("the terminal to have the focus", focused)

    async def file_there():
        r = await client.call_tool("exec", {"sandbox": sid, "command": "cat /tmp/mcp.txt 2>/dev/null"})
        return r.structured_content if r.structured_content["exit_code"] == 0 else None

    # What an app ignored (a shell not reading yet on a slow machine) is typed again.
    for attempt in range(4):
        typed = await client.call_tool(
            "computer", {"sandbox": sid, "action": "type", "text": "echo typed-through-mcp > /tmp/mcp.txt"}
        )
        assert not typed.is_error, texts(typed)
        enter = await client.call_tool(
            "computer", {"sandbox": sid, "action": "key", "text": "Return", "screenshot": True}
        )
        assert not enter.is_error, texts(enter)
        try:
            seen["exec"] = await until("the typed command's file", file_there, timeout=20)
            break
        except AssertionError:
            if attempt == 3:
                raise
    seen["enter"] = enter.structured_content
    seen["enter_image"] = png_size(images(enter)[0])
    failing = await client.call_tool("exec", {"sandbox": sid, "command": "echo oops >&2; exit 3"})
    seen["exec_failing"] = {"is_error": failing.is_error, **failing.structured_content}

    read = await client.call_tool("read_file", {"sandbox": sid, "path": "/tmp/mcp.txt"})
    seen["read_file"] = texts(read)
    wrote = await client.call_tool(
        "write_file", {"sandbox": sid, "path": "notes/hello.txt", "content": "héllo\n"}
    )
    assert not wrote.is_error, texts(wrote)
    back = await client.call_tool("exec", {"sandbox": sid, "command": "cat ~/notes/hello.txt; stat -c %U ~/notes/hello.txt"})
    seen["write_file"] = back.structured_content["stdout"]
    click = await client.call_tool("computer", {"sandbox": sid, "action": "left_click", "coordinate": [40, 40]})
    seen["click"] = {"is_error": click.is_error, "text": texts(click), **(click.structured_content or {})}

    # Mistakes are tool errors, and the server keeps serving.
    errors = {}
    for name, tool, args in [
        ("unknown_action", "computer", {"sandbox": sid, "action": "fly"}),
        ("off_screen", "computer", {"sandbox": sid, "action": "left_click", "coordinate": [5000, 10]}),
        ("unknown_key", "computer", {"sandbox": sid, "action": "key", "text": "ctrl+notakey"}),
        ("unknown_sandbox", "screenshot", {"sandbox": "no-such-desktop"}),
        ("ends_episode", "computer", {"sandbox": sid, "action": "done"}),
        ("device", "read_file", {"sandbox": sid, "path": "/dev/zero"}),
        ("too_big", "read_file", {"sandbox": sid, "path": "/usr/bin/bash", "max_bytes": 1000}),
        ("bad_scale", "screenshot", {"sandbox": sid, "scale": 7}),
        ("unknown_tool", "teleport", {}),
    ]:
        r = await client.call_tool(tool, args)
        errors[name] = {"is_error": bool(r.is_error), "text": texts(r)}
    seen["errors"] = errors
    listed = await client.call_tool("sandbox_list", {})
    seen["list_after_errors"] = [d["sandbox"] for d in listed.structured_content["desktops"]]

    windows = await client.call_tool("windows", {"sandbox": sid})
    seen["windows"] = [w["class"] for w in windows.structured_content["windows"]]

    resources = await client.list_resources()
    seen["resources"] = [str(r.uri) for r in resources.resources]
    sessions = json.loads((await client.read_resource("selfagent://sessions")).contents[0].text)
    seen["sessions"] = sessions["sessions"]
    one = json.loads(
        (await client.read_resource(f"selfagent://sessions/{desk['session']}")).contents[0].text
    )
    seen["session"] = {
        "source": one["source"],
        "steps": [
            {"idx": s["idx"], "actions": s["actions"], "before": s["before"], "after": s["after"]}
            for s in one["steps"]
        ],
    }
    frame_uri = one["steps"][0]["after"]
    frame = await client.read_resource(frame_uri)
    seen["frame"] = png_size(base64.b64decode(frame.contents[0].blob))
    return sid


async def stdio(selfagent, db, *extra):
    seen = {}
    async with Client(stdio_server(selfagent, db, *extra)) as client:
        seen["protocol_version"] = client.protocol_version
        seen["sandbox"] = await drive(client, seen)
    # The client closed stdin: the server removes the desktop and exits.
    return seen


def authorized(token):
    return httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(120.0)
    )


async def http(url, token):
    seen = {}
    async with Client(streamable_http_client(url, http_client=authorized(token))) as client:
        seen["protocol_version"] = client.protocol_version
        tools = await client.list_tools()
        seen["tools"] = sorted(t.name for t in tools.tools)
        up = await client.call_tool("sandbox_up", {"width": 1024, "height": 768})
        assert not up.is_error, texts(up)
        sid = up.structured_content["sandbox"]
        seen["up"] = up.structured_content
        shot = await client.call_tool("screenshot", {"sandbox": sid})
        seen["screenshot"] = png_size(images(shot)[0])
        key = await client.call_tool("computer", {"sandbox": sid, "action": "key", "text": "ctrl+alt+t"})
        seen["key"] = {"is_error": bool(key.is_error), "text": texts(key)}
        down = await client.call_tool("sandbox_down", {"sandbox": sid, "status": "succeeded", "answer": "done over http"})
        seen["down"] = texts(down)
        again = await client.call_tool("screenshot", {"sandbox": sid})
        seen["after_down"] = {"is_error": bool(again.is_error), "text": texts(again)}
    return seen


async def refused(url):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    seen = {}
    async with httpx2.AsyncClient() as http:
        for name, extra in [
            ("none", {}),
            ("wrong", {"Authorization": "Bearer " + "0" * 64}),
            ("not_bearer", {"Authorization": "Basic dXNlcjpwYXNz"}),
        ]:
            r = await http.post(url, json=body, headers={**headers, **extra})
            seen[name] = {"status": r.status_code, "www_authenticate": r.headers.get("www-authenticate")}
    return seen


async def legacy(url, token):
    """An HTTP session (the initialize handshake): closing it removes its desktop."""
    seen = {}
    async with Client(
        streamable_http_client(url, http_client=authorized(token)), mode="legacy"
    ) as client:
        seen["protocol_version"] = client.protocol_version
        up = await client.call_tool("sandbox_up", {})
        assert not up.is_error, texts(up)
        seen["sandbox"] = up.structured_content["sandbox"]
    return seen


async def run_task(selfagent, db, base_url):
    seen = {"progress": []}

    async def progress(value, total, message):
        seen["progress"].append({"progress": value, "total": total, "message": message})

    async with Client(stdio_server(selfagent, db, "--base-url", base_url, "--model", "scripted")) as client:
        r = await client.call_tool(
            "run_task",
            {"task": "move the mouse three times, then answer", "max_steps": 10},
            progress_callback=progress,
        )
        seen["is_error"] = bool(r.is_error)
        seen["text"] = texts(r)
        seen["result"] = r.structured_content
        listed = await client.call_tool("sandbox_list", {})
        seen["held_after"] = listed.structured_content["desktops"]
    return seen


async def cancel(selfagent, db, base_url):
    seen = {"progress": []}
    first = anyio.Event()

    async def progress(value, total, message):
        seen["progress"].append({"progress": value, "message": message})
        first.set()

    async with Client(stdio_server(selfagent, db, "--base-url", base_url, "--model", "scripted")) as client:
        async with anyio.create_task_group() as tg:

            async def call():
                await client.call_tool(
                    "run_task",
                    {"task": "keep moving the mouse", "max_steps": 40},
                    progress_callback=progress,
                )

            async def stop_after_first_step():
                await first.wait()
                seen["cancelled_at"] = len(seen["progress"])
                tg.cancel_scope.cancel()

            tg.start_soon(call)
            tg.start_soon(stop_after_first_step)
        # The server still answers after a cancelled call.
        listed = await client.call_tool("sandbox_list", {})
        seen["still_serving"] = not listed.is_error
        # Give the episode's end a chance to be recorded before the client closes: wait
        # for the recorded session to end (evidence in the recording).
        async def ended():
            sessions = json.loads((await client.read_resource("selfagent://sessions")).contents[0].text)
            tasks = [s for s in sessions["sessions"] if s["instruction"] == "keep moving the mouse"]
            return tasks if tasks and tasks[0]["status"] != "running" else None

        seen["sessions"] = await until("the cancelled episode's end in the recording", ended)
    return seen


async def limits(selfagent, db):
    seen = {}
    server = stdio_server(selfagent, db, "--max-desktops", "1", "--idle-timeout", "3")
    async with Client(server) as client:
        first = await client.call_tool("sandbox_up", {})
        assert not first.is_error, texts(first)
        seen["first"] = first.structured_content["sandbox"]
        second = await client.call_tool("sandbox_up", {})
        seen["second"] = {"is_error": bool(second.is_error), "text": texts(second)}

        async def emptied():
            listed = await client.call_tool("sandbox_list", {})
            return listed.structured_content if not listed.structured_content["desktops"] else None

        seen["listed_after_idle"] = (await until("the idle desktop released", emptied))["desktops"]
        third = await client.call_tool("sandbox_up", {})
        assert not third.is_error, texts(third)
        sid = third.structured_content["sandbox"]
        seen["third"] = sid
        proc = await anyio.run_process(["docker", "rm", "-f", sid])
        assert proc.returncode == 0, proc.stderr
        dead = await client.call_tool("screenshot", {"sandbox": sid})
        seen["dead"] = {"is_error": bool(dead.is_error), "text": texts(dead)}
        listed = await client.call_tool("sandbox_list", {})
        seen["listed_after_death"] = listed.structured_content["desktops"]
    return seen


def main():
    scenario, *args = sys.argv[1:]
    fn = {
        "stdio": stdio,
        "http": http,
        "refused": refused,
        "legacy": legacy,
        "run_task": run_task,
        "cancel": cancel,
        "limits": limits,
    }[scenario]
    seen = anyio.run(fn, *args)
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
