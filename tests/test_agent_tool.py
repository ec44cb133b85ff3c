"""The classifier as an MCP tool (classify_photo on Gradio's MCP server, /gradio_api/mcp), called by the `mcp`
Python SDK's own client over streamable HTTP, as an LLM agent's host calls it. Under keys: tests/test_keys.py."""
from __future__ import annotations

import asyncio
import base64
import json

from conftest import CAT_LABELS, PHOTOS


async def mcp_session(url: str, call, headers: dict | None = None):
    """call(session) inside an initialised MCP client session on the server's MCP endpoint."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async with streamablehttp_client(f"{url}/gradio_api/mcp/", headers=headers) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            return await call(session)


def use_the_tool(url: str, arguments: list[dict], headers: dict | None = None) -> tuple[list, list]:
    """The tools listed, and the result of classify_photo for each of the arguments."""
    async def call(session):
        tools = (await session.list_tools()).tools
        return tools, [await session.call_tool("classify_photo", each) for each in arguments]
    return asyncio.run(mcp_session(url, call, headers))


def test_an_agent_lists_the_one_tool_and_gets_a_cat(server):
    cat = base64.b64encode((PHOTOS / "cat.jpeg").read_bytes()).decode()
    tools, (plain, data_url, not_base64, not_an_image) = use_the_tool(server.url, [
        {"photo": cat}, {"photo": f"data:image/jpeg;base64,{cat}"}, {"photo": "not base64!"},
        {"photo": base64.b64encode(b"plain text, no image").decode()}])
    assert [tool.name for tool in tools] == ["classify_photo"]  # never Train, Serve this model or Flag
    assert set(tools[0].inputSchema["properties"]) == {"photo", "model_name"}
    assert "base64" in tools[0].inputSchema["properties"]["photo"]["description"]
    for result in (plain, data_url):
        assert not result.isError, result
        labels = json.loads(result.content[0].text)["labels"]
        assert labels[0]["label"] in CAT_LABELS and len(labels) == 5, labels
        assert 0 < labels[0]["probability"] <= 1 and labels == sorted(labels, key=lambda x: -x["probability"])
    assert not_base64.isError and "not valid base64" in not_base64.content[0].text
    assert not_an_image.isError and "image" in not_an_image.content[0].text.lower()
    assert "Traceback" not in not_an_image.content[0].text


def test_the_documented_client_gets_a_cat(server, capsys):
    import re

    from conftest import ROOT

    docs = (ROOT / "docs" / "api.md").read_text()
    [block] = [b for b in re.findall(r"```python\n(.*?)```", docs, re.S) if "streamablehttp_client" in b]
    exec(block.replace("http://localhost:8080", server.url).replace('"cat.jpeg"', repr(str(PHOTOS / "cat.jpeg"))),
         {"__name__": "docs"})
    assert json.loads(capsys.readouterr().out)["labels"][0]["label"] in CAT_LABELS
