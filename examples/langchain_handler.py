"""Register one LangChain callback handler and every model call is counted.

invoke, stream, batch and async calls, nested in chains, with several models at once.
Offline: ChatOpenAI talks to FakeOpenAI through its ``http_client``; with a real key, drop
``base_url``/``http_client``/``http_async_client`` and nothing else changes.

    python examples/langchain_handler.py
"""

from __future__ import annotations

import asyncio

import httpx2
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

from quota_hooks import QuotaManager, QuotaPolicy
from quota_hooks.adapters.langchain import QuotaCallbackHandler
from quota_hooks.testing import FakeOpenAI, FakeUsage

fake = FakeOpenAI(FakeUsage(input_tokens=120, output_tokens=40, cached_tokens=64))
manager = QuotaManager(QuotaPolicy(rpm=100, monthly_budget_usd=5))
handler = QuotaCallbackHandler(manager=manager, workspace_id="acme")


def model(name: str) -> ChatOpenAI:
    return ChatOpenAI(
        model=name, api_key="sk-test", base_url="http://fake/v1", stream_usage=True,
        http_client=httpx2.Client(transport=fake.transport()),
        http_async_client=httpx2.AsyncClient(transport=fake.transport()),
    )


writer, critic = model("gpt-4o-mini"), model("gpt-4o")
chain = (
    ChatPromptTemplate.from_template("Write a paragraph about {topic}.")
    | writer
    | StrOutputParser()
    | (lambda draft: f"Critique this: {draft}")
    | critic
    | StrOutputParser()
)

# The handler passed in the config reaches every model call inside the chain. Tags of the form
# "kind:value" and metadata "user" become scopes; metadata "workspace_id" picks the workspace.
config = {"callbacks": [handler], "tags": ["team:docs"], "metadata": {"user": "u-42"}}
print("chain:", chain.invoke({"topic": "rate limits"}, config=config)[:40], "...")
chain.batch([{"topic": "budgets"}, {"topic": "tokens"}], config=config)

# A stream is recorded once, when it ends.
print("stream:", "".join(str(c.content) for c in writer.stream("Hi", config=config)))


async def main() -> None:
    await writer.ainvoke("Hello", config={"callbacks": [handler],
                                          "metadata": {"workspace_id": "beta"}})


asyncio.run(main())

for workspace in ("acme", "beta"):
    report = manager.status(workspace)
    assert report.enhanced_tracking is not None
    print(f"\nworkspace {workspace}: {report.status.value}, "
          f"{report.requests_per_minute.current} model calls, "
          f"{report.tokens_per_day.current} tokens, ${report.monthly_budget_usd.current:.6f}")
    for name, usage in report.enhanced_tracking.models_breakdown.items():
        print(f"  {name:<26} {usage.request_count} calls {usage.tokens_used:>5} tokens")
