"""A store's password and the API's tokens must never show in what quota-hooks prints: a
redacted URL, a ConfigurationError, a StorageError (and the exceptions chained to it, as a
traceback or an error reporter shows them), a repr, a log line, the CLI's messages.

Attack: whoever reads the logs, an error tracker or a CI log collects the Redis password
(given in the query, ``?password=``, which redis-py accepts, or with an unencoded ``# / ? [
] @`` that makes parsers cut the URL inside it) or an API token (from ``repr(ApiTokens)`` in a
traceback's locals, or echoed from a malformed ``QUOTA_HOOKS_API_TOKENS`` entry).

Every secret is a canary; redis-py shows a host read from a password in lower case, so the
canaries are looked for in any case.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import traceback
from collections.abc import Callable, Iterator

import pytest
import redis
from webhook_harness import FakeDNS, closed_port

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.cli import main
from quota_hooks.errors import ConfigurationError, StorageError
from quota_hooks.server import ApiTokens, create_app, quota_router
from quota_hooks.storage import redacted, store_from_url
from quota_hooks.storage.redis import RedisStore

# Two halves of one password, for the URLs where a special character sits between them.
HEAD = "PwHead" + secrets.token_hex(5)
TAIL = "PwTail" + secrets.token_hex(5)
PASSWORD = "StorePw" + secrets.token_hex(6)
TOKEN = "ApiTok" + secrets.token_hex(8)
ADMIN = "AdminTok" + secrets.token_hex(8)


def leaked(text: str, *canaries: str) -> list[str]:
    """The canaries found in ``text``, in any case."""
    lowered = text.lower()
    return [c for c in canaries if c.lower() in lowered]


def shown(exc: BaseException) -> str:
    """All an exception shows: its text, repr and traceback, with the exceptions chained to
    it as a traceback prints them (``__cause__``, an unsuppressed ``__context__``)."""
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        parts += [str(link), repr(link)]
        link = link.__cause__ if link.__suppress_context__ else link.__context__
    return "\n".join(parts)


def cause_chain(exc: BaseException) -> list[BaseException]:
    chain, link = [], exc.__cause__
    while link is not None:
        chain.append(link)
        link = link.__cause__
    return chain


# ---------------------------------------------------------------------- redacted()
@pytest.mark.parametrize(("url", "host", "secrets_in_it"), [
    pytest.param(f"redis://127.0.0.1:6379/0?password={PASSWORD}&socket_timeout=bogus",
                 "redis://127.0.0.1:6379/0?", (PASSWORD,), id="query-password"),
    pytest.param(f"rediss://cache.internal:6380/2?ssl_cert_reqs=none&PassWord={HEAD}#{TAIL}",
                 "rediss://cache.internal:6380/2?", (HEAD, TAIL), id="query-password-hash"),
    pytest.param(f"redis://:{HEAD}#{TAIL}@127.0.0.1:6379/0", "@127.0.0.1:6379/0",
                 (HEAD, TAIL), id="hash"),
    pytest.param(f"redis://:{HEAD}/{TAIL}@127.0.0.1:6379/0", "@127.0.0.1:6379/0",
                 (HEAD, TAIL), id="slash"),
    pytest.param(f"redis://:{HEAD}?{TAIL}@127.0.0.1:6379/0", "@127.0.0.1:6379/0",
                 (HEAD, TAIL), id="question-mark"),
    pytest.param(f"redis://default:{HEAD}[{TAIL}@127.0.0.1:6379/0",
                 "redis://default:***@127.0.0.1:6379/0", (HEAD, TAIL), id="open-bracket"),
    pytest.param(f"redis://default:{HEAD}]{TAIL}@127.0.0.1:6379/0",
                 "redis://default:***@127.0.0.1:6379/0", (HEAD, TAIL), id="close-bracket"),
    pytest.param(f"redis://default:{HEAD}@{TAIL}@127.0.0.1:6379/0",
                 "redis://default:***@127.0.0.1:6379/0", (HEAD, TAIL), id="at-sign"),
    pytest.param(f"redis://:{HEAD}#{TAIL}/x?y@[::1]:6379/0", "@[::1]:6379/0", (HEAD, TAIL),
                 id="all-of-them-ipv6"),
    pytest.param(f"redis://{PASSWORD}@127.0.0.1:6379/0", "***@127.0.0.1:6379/0",
                 (PASSWORD,), id="password-without-colon"),
    pytest.param(f"redis://127.0.0.1:{PASSWORD}/0", "redis://127.0.0.1:***/0", (PASSWORD,),
                 id="password-as-port"),
])
def test_redacted_never_shows_the_password(url: str, host: str,
                                           secrets_in_it: tuple[str, ...]) -> None:
    """The URL redis-py would connect with (host, port, database, other options) is still
    shown, its password in no form."""
    text = redacted(url)
    assert not leaked(text, *secrets_in_it), text
    assert host in text and "***" in text, text


# ---------------------------------------------------------------------- bad store URLs
_BAD_URLS = [
    # redis-py reads the port from the password: "Port could not be cast ... as 'PwHead...'"
    pytest.param(f"redis://:{HEAD}#{TAIL}@127.0.0.1:6379/0", id="hash"),
    pytest.param(f"redis://:{HEAD}/{TAIL}@127.0.0.1:6379/0", id="slash"),
    pytest.param(f"redis://:{HEAD}?{TAIL}@127.0.0.1:6379/0", id="question-mark"),
    # urlsplit refuses the URL: "Invalid IPv6 URL"
    pytest.param(f"redis://default:{HEAD}[{TAIL}@127.0.0.1:6379/0", id="open-bracket"),
    pytest.param(f"redis://default:{HEAD}]{TAIL}@127.0.0.1:6379/0", id="close-bracket"),
    # the password given as the port, and a bad option next to a password in the query
    pytest.param(f"redis://127.0.0.1:{HEAD}/0", id="password-as-port"),
    pytest.param(f"redis://127.0.0.1:6379/0?password={HEAD}{TAIL}&socket_timeout=bogus",
                 id="query-password"),
]


def _configure_with(entry: str, url: str) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        if entry == "store_from_url":
            store_from_url(url)
        elif entry == "RedisStore.from_url":
            RedisStore.from_url(url)
        else:
            QuotaManager.from_env({"QUOTA_HOOKS_STORE": url})
    return caught.value


@pytest.mark.parametrize("entry", ["store_from_url", "RedisStore.from_url",
                                   "QuotaManager.from_env"])
@pytest.mark.parametrize("url", _BAD_URLS)
def test_a_store_url_that_cannot_be_used_is_refused_without_its_password(
        entry: str, url: str) -> None:
    """A ConfigurationError (not a bare ValueError) whose text, traceback and chained
    exceptions hold no piece of the password; it names the URL as redacted() shows it."""
    error = _configure_with(entry, url)
    assert not leaked(shown(error), HEAD, TAIL), shown(error)
    assert f"store URL {redacted(url)!r}" in str(error)


@pytest.mark.parametrize("via", ["--store", "QUOTA_HOOKS_STORE"])
@pytest.mark.parametrize("url", _BAD_URLS)
def test_the_cli_refuses_a_bad_store_url_without_its_password(
        via: str, url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    if via == "--store":
        args = ["status", "acme", "--store", url]
    else:
        monkeypatch.setenv("QUOTA_HOOKS_STORE", url)
        args = ["status", "acme"]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert not leaked(out + err, HEAD, TAIL), err
    assert err.startswith(f"quota-hooks status: {via}: store URL "), err


# ---------------------------------------------------------------------- failed Redis calls
@pytest.fixture
def no_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    """Host names resolve numerically only: a host read from a password fails at once, and no
    DNS query leaves the machine."""
    return FakeDNS(monkeypatch, {})


def _unreachable_urls(port: int) -> list[tuple[str, tuple[str, ...]]]:
    return [
        (f"redis://:{PASSWORD}@127.0.0.1:{port}/0", (PASSWORD,)),
        (f"redis://default:{PASSWORD}@127.0.0.1:{port}/0", (PASSWORD,)),
        (f"redis://127.0.0.1:{port}/0?password={PASSWORD}", (PASSWORD,)),
        # No ":" before the password: redis-py takes the user info as a user name ...
        (f"redis://{PASSWORD}@127.0.0.1:{port}/0", (PASSWORD,)),
        # ... and with an unencoded "#", "/" or "?" it connects to the first half as the host
        # (which it shows in lower case).
        (f"redis://{HEAD}#{TAIL}@127.0.0.1:{port}/0", (HEAD, TAIL)),
        (f"redis://{HEAD}/{TAIL}@127.0.0.1:{port}/0", (HEAD, TAIL)),
        (f"redis://{HEAD}?{TAIL}@127.0.0.1:{port}/0", (HEAD, TAIL)),
    ]


def _failures(store: RedisStore) -> list[StorageError]:
    """The StorageErrors of every kind of call: a Lua script, plain commands, both faces."""
    calls: list[Callable[[], object]] = [
        lambda: store.counters("ws:a", 1_767_225_600.0, "2026-01"),
        lambda: store.breakdown("ws:a", "2026-01", "model"),
        lambda: store.recent("ws:a", 5),
        store.workspaces,
        lambda: asyncio.run(store.acounters("ws:a", 1_767_225_600.0, "2026-01")),
        lambda: asyncio.run(store.aworkspaces()),
    ]
    found = []
    for call in calls:
        with pytest.raises(StorageError) as caught:
            call()
        found.append(caught.value)
    return found


def test_a_failed_redis_call_never_shows_the_password(no_dns: FakeDNS) -> None:
    """A store on a closed 127.0.0.1 port, its password in each place a URL can hold one:
    no StorageError, no exception in its __cause__ chain, no traceback and no repr of the
    store holds a piece of it. Where nothing needs scrubbing, redis-py's own error is still
    chained, and still says what went wrong."""
    port = closed_port()
    for url, canaries in _unreachable_urls(port):
        store = RedisStore.from_url(url)
        try:
            assert not leaked(repr(store), *canaries), (url, repr(store))
            for error in _failures(store):
                assert not leaked(shown(error), *canaries), (url, shown(error))
                for link in cause_chain(error):
                    assert not leaked(f"{link} {link!r}", *canaries), (url, link)
                if "127.0.0.1" in repr(store):  # the password was not read as the host
                    assert f"connecting to 127.0.0.1:{port}" in str(error), error
                    assert isinstance(error.__cause__, redis.ConnectionError), url
        finally:
            store.close(0)


def test_the_manager_logs_a_failed_redis_store_without_its_password(
        no_dns: FakeDNS, caplog: pytest.LogCaptureFixture) -> None:
    """record() on a store that cannot be reached logs the failure (with its traceback) and
    goes on; status() raises; the CLI prints the StorageError. None shows the password."""
    port = closed_port()
    url = f"redis://{HEAD}#{TAIL}@127.0.0.1:{port}/0"
    manager = QuotaManager(QuotaPolicy(), store=RedisStore.from_url(url))
    try:
        with caplog.at_level(logging.DEBUG):
            manager.record(UsageRecord(workspace_id="a", model="gpt-4o-mini", input_tokens=5))
            with pytest.raises(StorageError) as caught:
                manager.status("a")
    finally:
        manager.close()
    logged = "\n".join(f"{r.name} {r.getMessage()}\n{r.exc_text or ''}" for r in caplog.records)
    assert caplog.records, "the failure was logged"
    assert not leaked(logged, HEAD, TAIL), logged
    assert not leaked(shown(caught.value), HEAD, TAIL), shown(caught.value)


def test_the_cli_prints_a_failed_redis_store_without_its_password(
        no_dns: FakeDNS, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://{HEAD}#{TAIL}@127.0.0.1:{closed_port()}/0"
    assert main(["status", "acme", "--store", url]) == 1
    out, err = capsys.readouterr()
    assert not leaked(out + err, HEAD, TAIL), err
    assert err.startswith("quota-hooks status: RedisStore("), err
    assert "failed" in err


def test_a_store_whose_user_name_is_in_its_host_still_holds_commits_for_replay(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Scrubbing the credentials out of an error must not change what the store does with
    it: a commit that Redis did not take because it could not be reached is held for replay
    (the store tells that by the redis-py error chained to the StorageError), also when the
    user name ("quota") is part of the host ("quota-redis") and so of redis-py's message."""
    FakeDNS(monkeypatch, {"quota-redis": [["127.0.0.1"]]})
    store = RedisStore.from_url(f"redis://quota:{PASSWORD}@quota-redis:{closed_port()}/0")
    manager = QuotaManager(QuotaPolicy.unlimited(), store=store)
    try:
        manager.record(UsageRecord(workspace_id="a", model="gpt-4o-mini", input_tokens=5))
        assert store.health() == "Redis did not answer: 1 commit(s) held for replay"
        with pytest.raises(StorageError) as caught:
            store.workspaces()
        assert isinstance(caught.value.__cause__, redis.ConnectionError)
        assert not leaked(shown(caught.value), PASSWORD)
    finally:
        store._backlog.clear()  # nothing to replay: Redis is not there
        manager.close()


# ---------------------------------------------------------------------- API tokens
def test_api_tokens_repr_shows_no_token(manager: QuotaManager) -> None:
    """Not repr() or str(), nor the repr of anything the router's endpoints close over (a
    frame's free variables, which error reporters record)."""
    tokens = ApiTokens.parse(f"*:{ADMIN},acme:{TOKEN},beta:{TOKEN}")
    assert tokens.access(TOKEN) is not None and tokens.access(ADMIN) is not None
    assert not leaked(f"{tokens!r} {tokens!s} {[tokens]!r}", TOKEN, ADMIN)
    assert repr(tokens) == "ApiTokens(2 token(s), 1 admin, workspaces=['acme', 'beta'])"
    router = quota_router(manager, tokens=tokens)
    endpoints = [route.endpoint for route in router.routes]  # type: ignore[attr-defined]
    held = [cell.cell_contents for e in endpoints for cell in (e.__closure__ or ())]
    assert tokens in held  # the test looks at the closures that hold the tokens
    assert not leaked(" ".join(repr(value) for value in held), TOKEN, ADMIN)


_MALFORMED_TOKENS = [
    pytest.param(f"*:{ADMIN},acme={TOKEN}", 2, id="equals-sign"),
    pytest.param(f"*:{ADMIN},acme {TOKEN}", 2, id="blank"),
    pytest.param(f"{TOKEN}:", 1, id="no-workspace-name-after"),
    pytest.param(f":{TOKEN},*:{ADMIN}", 1, id="no-workspace-name"),
    pytest.param(f"*:{ADMIN},{TOKEN}:acme", 2, id="swapped"),  # the token as the name
]


@pytest.mark.parametrize(("text", "entry"), _MALFORMED_TOKENS)
def test_a_malformed_token_entry_is_not_echoed(text: str, entry: int,
                                               manager: QuotaManager) -> None:
    """Through each way tokens are read: the error names the variable (or argument) and the
    entry's position, and holds no token."""
    for parse, source in ((lambda: ApiTokens.from_env({"QUOTA_HOOKS_API_TOKENS": text}),
                           "QUOTA_HOOKS_API_TOKENS"),
                          (lambda: create_app(manager, tokens=text), "tokens")):
        with pytest.raises(ConfigurationError) as caught:
            parse()
        assert not leaked(shown(caught.value), TOKEN, ADMIN), shown(caught.value)
        message = str(caught.value)
        assert message.startswith(f"{source}: ") and f"entry {entry}" in message, message


@pytest.mark.parametrize(("text", "entry"), _MALFORMED_TOKENS)
def test_quota_hooks_serve_does_not_echo_a_malformed_token_entry(
        text: str, entry: int, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``quota-hooks serve`` (the only command that reads the tokens) refuses to start."""
    monkeypatch.setenv("QUOTA_HOOKS_API_TOKENS", text)
    monkeypatch.setenv("QUOTA_HOOKS_STORE", "memory://")
    assert main(["serve", "--port", str(closed_port())]) == 2
    out, err = capsys.readouterr()
    assert not leaked(out + err, TOKEN, ADMIN), err
    assert err.startswith("quota-hooks serve: QUOTA_HOOKS_API_TOKENS: "), err
    assert f"entry {entry}" in err


@pytest.fixture
def manager() -> Iterator[QuotaManager]:
    manager = QuotaManager(QuotaPolicy())
    yield manager
    manager.close()
