"""The real servers the providers of kinds ``mysql``, ``redis`` and ``rabbitmq`` hand out access to, for the
credential tests: per test, a scratch database / key space / vhost, roles or permissions a rule hands out, and a
policy file whose provider points at it. Other test sessions use the same servers at the same time, so every name
carries this test's random tag (the provider's ``username_prefix`` too: reconciliation never sees another test's
accounts), and whatever is left is removed at the end.

Each target says how a pipeline uses a credential (``use``: the allowed operation, returning the open session),
what is refused outside the granted scope (``refused_outside``), whether a session was ended by the server
(``session_ended``) and whether a login is refused (``login_refused``) — written with each server's own client,
independently of grantbot's providers."""

from __future__ import annotations

import asyncio
import base64
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import aiomysql
import aiormq
import pymysql
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import POLICIES

MYSQL = ("127.0.0.1", 3306)
REDIS = ("127.0.0.1", 6379)
RABBITMQ_API = ("127.0.0.1", 15672)
RABBITMQ_AMQP = ("127.0.0.1", 5672)


def policy_with(tmp_path: Path, provider_yaml: str, staging: str, production: str, name: str = "policy.yaml") -> Path:
    """tests/policies/basic.yaml with one provider, credentials ``staging`` on its staging-read rule
    (auto-approved) and ``production`` on prod-write (people approve); each a YAML flow mapping of parameters."""
    text = (POLICIES / "basic.yaml").read_text()
    text = text.replace(
        "    decision: auto_approve\n    max_ttl_seconds: 1800\n",
        "    decision: auto_approve\n    max_ttl_seconds: 1800\n"
        f"    credentials:\n      - {staging}\n", 1)
    text = text.replace(
        "    approvers: {users: [U0APPROVER, U0SECOND]}\n",
        "    approvers: {users: [U0APPROVER, U0SECOND]}\n"
        f"    credentials:\n      - {production}\n", 1)
    text += "admins: {users: [U0ADMIN]}\n" + "providers:\n" + provider_yaml
    path = tmp_path / name
    path.write_text(text)
    return path


class KindTarget:
    """What every kind's target offers the lifecycle tests."""

    kind: str
    name: str  # the provider's name in the policy
    admin: tuple[str, int]  # where the provider's admin connection goes (a TcpProxy may stand in between)
    url_env: str
    tag: str

    def admin_url(self, host: str, port: int) -> str:
        raise NotImplementedError

    def policy(self, tmp_path: Path, name: str = "policy.yaml") -> Path:
        raise NotImplementedError

    async def use(self, credential: dict) -> Any:
        """Log in as the pipeline does and do what the staging rule grants; returns the open session."""
        raise NotImplementedError

    async def refused_outside(self, credential: dict, session: Any) -> None:
        """Assert that what the rule does not grant is refused."""
        raise NotImplementedError

    async def session_ended(self, session: Any) -> bool:
        raise NotImplementedError

    async def login_refused(self, credential: dict) -> bool:
        raise NotImplementedError

    async def close(self, session: Any) -> None:
        raise NotImplementedError

    async def accounts_made(self) -> list[str]:
        """The names of the accounts with this test's prefix that exist now."""
        raise NotImplementedError

    async def make_foreign(self, name: str) -> None:
        """An account with this test's prefix that grantbot did not make (someone else's)."""
        raise NotImplementedError

    async def drop(self) -> None:
        raise NotImplementedError


# -- MySQL / MariaDB ------------------------------------------------------------------------------------------------


class MySQLTarget(KindTarget):
    kind = "mysql"
    name = "shop-db"
    admin = MYSQL

    def __init__(self) -> None:
        self.tag = secrets.token_hex(2)
        self.database = f"gbt_{self.tag}_{secrets.token_hex(2)}"
        self.read_role = f"{self.database}_read"
        self.prefix = f"t{self.tag}_"  # six characters: the most MySQL's 32-character user names leave
        self.url_env = f"GRANTBOT_TEST_MYSQL_{self.tag.upper()}"

    def admin_url(self, host: str = MYSQL[0], port: int = MYSQL[1]) -> str:
        return f"mysql://root@{host}:{port}/{self.database}"

    def policy(self, tmp_path: Path, name: str = "policy.yaml") -> Path:
        provider = (f"  - name: {self.name}\n    kind: mysql\n    url_env: {self.url_env}\n"
                    f"    username_prefix: {self.prefix}\n    options: {{connect_timeout: 1, statement_timeout: 3}}\n")
        return policy_with(tmp_path, provider, f"{{provider: {self.name}, roles: [{self.read_role}]}}",
                           f"{{provider: {self.name}, roles: [{self.read_role}], "
                           f"privileges: ['INSERT, UPDATE ON {self.database}.orders']}}", name)

    async def _root(self) -> aiomysql.Connection:
        return await aiomysql.connect(host=MYSQL[0], port=MYSQL[1], user="root", autocommit=True)

    async def create(self) -> None:
        conn = await self._root()
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(f"CREATE DATABASE `{self.database}`")
                await cursor.execute(f"CREATE TABLE `{self.database}`.orders (id int PRIMARY KEY, item text)")
                await cursor.execute(f"CREATE TABLE `{self.database}`.payroll (id int PRIMARY KEY, amount int)")
                await cursor.execute(f"INSERT INTO `{self.database}`.orders VALUES (1, 'espresso'), (2, 'flat white')")
                await cursor.execute(f"CREATE ROLE `{self.read_role}`")
                await cursor.execute(f"GRANT SELECT ON `{self.database}`.orders TO `{self.read_role}`")
        finally:
            conn.close()

    async def use(self, credential: dict) -> aiomysql.Connection:
        conn = await aiomysql.connect(host=MYSQL[0], port=MYSQL[1], user=credential["username"],
                                      password=credential["password"], db=self.database, autocommit=True)
        async with conn.cursor() as cursor:
            await cursor.execute("SELECT item FROM orders WHERE id = 1")
            assert (await cursor.fetchone())[0] == "espresso"
        return conn

    async def refused_outside(self, credential: dict, session: aiomysql.Connection) -> None:
        for statement in ("INSERT INTO orders VALUES (3, 'cortado')", "SELECT amount FROM payroll"):
            async with session.cursor() as cursor:
                try:
                    await cursor.execute(statement)
                except pymysql.err.OperationalError as exc:
                    assert exc.args[0] in (1142, 1143), exc  # command denied
                except pymysql.err.ProgrammingError as exc:
                    assert exc.args[0] in (1142, 1143), exc
                else:
                    raise AssertionError(f"{statement!r} was allowed")

    async def session_ended(self, session: aiomysql.Connection) -> bool:
        try:
            async with session.cursor() as cursor:
                await cursor.execute("SELECT 1")
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError, ConnectionError, RuntimeError):
            return True
        return False

    async def login_refused(self, credential: dict) -> bool:
        try:
            conn = await aiomysql.connect(host=MYSQL[0], port=MYSQL[1], user=credential["username"],
                                          password=credential["password"], connect_timeout=3)
        except pymysql.err.OperationalError as exc:
            assert exc.args[0] in (1045, 1698, 4151), exc  # access denied (with or without a password); locked
            return True
        conn.close()
        return False

    async def close(self, session: aiomysql.Connection) -> None:
        session.close()

    async def accounts_made(self) -> list[str]:
        conn = await self._root()
        try:
            async with conn.cursor() as cursor:
                await cursor.execute("SELECT User FROM mysql.global_priv WHERE LEFT(User, 6) = %s ORDER BY User",
                                     (self.prefix,))
                return [row[0] for row in await cursor.fetchall()]
        finally:
            conn.close()

    async def make_foreign(self, name: str) -> None:
        conn = await self._root()
        try:
            async with conn.cursor() as cursor:
                await cursor.execute("CREATE USER %s@'%%' IDENTIFIED BY 'theirs'", (name,))
        finally:
            conn.close()

    async def drop(self) -> None:
        conn = await self._root()
        try:
            async with conn.cursor() as cursor:
                await cursor.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE LEFT(USER, 6) = %s",
                                     (self.prefix,))
                for (thread,) in await cursor.fetchall():
                    try:
                        await cursor.execute(f"KILL CONNECTION {int(thread)}")
                    except pymysql.err.MySQLError:
                        pass
                for name in await self.accounts_made():
                    await cursor.execute("DROP USER IF EXISTS %s@'%%'", (name,))
                await cursor.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
                await cursor.execute(f"DROP ROLE IF EXISTS `{self.read_role}`")
        finally:
            conn.close()


# -- Redis -----------------------------------------------------------------------------------------------------------


class RedisTarget(KindTarget):
    kind = "redis"
    name = "cache"
    admin = REDIS

    def __init__(self) -> None:
        self.tag = secrets.token_hex(4)
        self.space = f"gbt:{self.tag}"
        self.prefix = f"gbt_{self.tag}_"
        self.url_env = f"GRANTBOT_TEST_REDIS_{self.tag.upper()}"

    def admin_url(self, host: str = REDIS[0], port: int = REDIS[1]) -> str:
        return f"redis://{host}:{port}/0"

    def policy(self, tmp_path: Path, name: str = "policy.yaml") -> Path:
        provider = (f"  - name: {self.name}\n    kind: redis\n    url_env: {self.url_env}\n"
                    f"    username_prefix: {self.prefix}\n    options: {{connect_timeout: 1, statement_timeout: 3}}\n")
        return policy_with(tmp_path, provider, f"{{provider: {self.name}, acl: '~{self.space}:orders:* +get'}}",
                           f"{{provider: {self.name}, acl: '~{self.space}:orders:* +get +set'}}", name)

    def _root(self) -> aioredis.Redis:
        return aioredis.Redis(host=REDIS[0], port=REDIS[1])

    async def create(self) -> None:
        async with self._root() as root:
            await root.set(f"{self.space}:orders:1", "espresso")
            await root.set(f"{self.space}:payroll:1", "1000")

    async def use(self, credential: dict) -> aioredis.Redis:
        # One connection, never silently re-made: a test sees the server end it.
        session = aioredis.Redis(host=REDIS[0], port=REDIS[1], username=credential["username"],
                                 password=credential["password"], single_connection_client=True,
                                 retry=Retry(NoBackoff(), 0))
        assert await session.get(f"{self.space}:orders:1") == b"espresso"
        return session

    async def refused_outside(self, credential: dict, session: aioredis.Redis) -> None:
        for command in (session.get(f"{self.space}:payroll:1"), session.set(f"{self.space}:orders:2", "x"),
                        session.flushall()):
            try:
                await command
            except NoPermissionError:
                continue
            raise AssertionError("a command outside the ACL was allowed")

    async def session_ended(self, session: aioredis.Redis) -> bool:
        try:
            await session.get(f"{self.space}:orders:1")  # what it may do (PING is not among it)
        except (RedisConnectionError, AuthenticationError, ConnectionError):
            return True
        return False

    async def login_refused(self, credential: dict) -> bool:
        session = aioredis.Redis(host=REDIS[0], port=REDIS[1], username=credential["username"],
                                 password=credential["password"], single_connection_client=True,
                                 retry=Retry(NoBackoff(), 0))
        try:
            await session.get(f"{self.space}:orders:1")
        except AuthenticationError:
            return True
        finally:
            await session.aclose()
        return False

    async def close(self, session: aioredis.Redis) -> None:
        try:
            await session.aclose()
        except (RedisConnectionError, ConnectionError):
            pass

    async def accounts_made(self) -> list[str]:
        async with self._root() as root:
            names = [n.decode() if isinstance(n, bytes) else n for n in await root.acl_users()]
            return sorted(name for name in names if name.startswith(self.prefix))

    async def make_foreign(self, name: str) -> None:
        async with self._root() as root:
            await root.execute_command("ACL", "SETUSER", name, "on", ">theirs", "~*", "+get")

    async def drop(self) -> None:
        async with self._root() as root:
            for name in await self.accounts_made():
                await root.execute_command("ACL", "DELUSER", name)
                try:
                    await root.execute_command("CLIENT", "KILL", "USER", name)
                except ResponseError:
                    pass
            async for key in root.scan_iter(match=f"{self.space}:*"):
                await root.delete(key)


# -- RabbitMQ --------------------------------------------------------------------------------------------------------


class RabbitMQTarget(KindTarget):
    kind = "rabbitmq"
    name = "events"
    admin = RABBITMQ_API

    def __init__(self) -> None:
        self.tag = secrets.token_hex(4)
        self.vhost = f"gbt_{self.tag}"
        self.other_vhost = f"gbt_{self.tag}_other"
        self.prefix = f"gbt_{self.tag}_"
        self.url_env = f"GRANTBOT_TEST_RABBITMQ_{self.tag.upper()}"

    def admin_url(self, host: str = RABBITMQ_API[0], port: int = RABBITMQ_API[1]) -> str:
        return f"http://guest:guest@{host}:{port}"

    def policy(self, tmp_path: Path, name: str = "policy.yaml") -> Path:
        provider = (f"  - name: {self.name}\n    kind: rabbitmq\n    url_env: {self.url_env}\n"
                    f"    username_prefix: {self.prefix}\n    options: {{connect_timeout: 1, request_timeout: 3, "
                    f"amqp_port: {RABBITMQ_AMQP[1]}}}\n")
        return policy_with(tmp_path, provider,
                           f"{{provider: {self.name}, vhost: {self.vhost}, configure: '^$', write: '^$', "
                           f"read: '^orders$'}}",
                           f"{{provider: {self.name}, vhost: {self.vhost}, configure: '^$', write: '^amq\\.default$', "
                           f"read: '^orders$'}}", name)

    async def _api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        guest = "Basic " + base64.b64encode(b"guest:guest").decode()
        async with aiohttp.ClientSession(headers={"Authorization": guest}) as http:
            async with http.request(method, f"http://{RABBITMQ_API[0]}:{RABBITMQ_API[1]}/api{path}",
                                    json=body) as resp:
                text = await resp.text()
                return resp.status, (await resp.json() if text and resp.content_type == "application/json" else text)

    async def create(self) -> None:
        for vhost in (self.vhost, self.other_vhost):
            status, _ = await self._api("PUT", f"/vhosts/{vhost}")
            assert status in (201, 204), status
            await self._api("PUT", f"/permissions/{vhost}/guest", {"configure": ".*", "write": ".*", "read": ".*"})
        conn = await aiormq.connect(f"amqp://guest:guest@{RABBITMQ_AMQP[0]}:{RABBITMQ_AMQP[1]}/{self.vhost}")
        channel = await conn.channel()
        for queue in ("orders", "payroll"):
            await channel.queue_declare(queue)
            await channel.basic_publish(b"espresso", routing_key=queue)
        await conn.close()

    async def use(self, credential: dict) -> aiormq.Connection:
        conn = await aiormq.connect(f"amqp://{credential['username']}:{credential['password']}@"
                                    f"{RABBITMQ_AMQP[0]}:{RABBITMQ_AMQP[1]}/{credential['vhost']}")
        channel = await conn.channel()
        declared = await channel.queue_declare("orders", passive=True)
        assert declared.message_count >= 1
        got = await channel.basic_get("orders", no_ack=False)
        assert got.body == b"espresso"
        await channel.basic_reject(got.delivery_tag, requeue=True)  # leave it for the next test step
        return conn

    async def refused_outside(self, credential: dict, session: aiormq.Connection) -> None:
        channel = await session.channel()
        try:
            await channel.basic_get("payroll")
        except aiormq.exceptions.ChannelAccessRefused:
            pass
        else:
            raise AssertionError("reading payroll was allowed")
        try:
            await aiormq.connect(f"amqp://{credential['username']}:{credential['password']}@"
                                 f"{RABBITMQ_AMQP[0]}:{RABBITMQ_AMQP[1]}/{self.other_vhost}")
        except aiormq.exceptions.AMQPError as exc:  # the server closes the connection: not allowed to the vhost
            assert "NOT_ALLOWED" in repr(exc.args) or "access to vhost" in repr(exc.args) or \
                isinstance(exc, aiormq.exceptions.InvalidFrameError), exc
        else:
            raise AssertionError("another vhost was allowed")

    async def session_ended(self, session: aiormq.Connection) -> bool:
        if session.is_closed:
            return True
        try:
            channel = await asyncio.wait_for(session.channel(), 2)
            await asyncio.wait_for(channel.queue_declare("orders", passive=True), 2)
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError, TimeoutError):
            return True
        return False

    async def login_refused(self, credential: dict) -> bool:
        try:
            conn = await aiormq.connect(f"amqp://{credential['username']}:{credential['password']}@"
                                        f"{RABBITMQ_AMQP[0]}:{RABBITMQ_AMQP[1]}/{credential['vhost']}")
        except (aiormq.exceptions.ProbableAuthenticationError, aiormq.exceptions.AMQPConnectionError):
            return True
        await conn.close()
        return False

    async def close(self, session: aiormq.Connection) -> None:
        try:
            await session.close()
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError):
            pass

    async def accounts_made(self) -> list[str]:
        _, users = await self._api("GET", "/users")
        return sorted(u["name"] for u in users if u["name"].startswith(self.prefix))

    async def make_foreign(self, name: str) -> None:
        status, _ = await self._api("PUT", f"/users/{name}", {"password": "theirs", "tags": ""})
        assert status in (201, 204)

    async def drop(self) -> None:
        for name in await self.accounts_made():
            await self._api("DELETE", f"/users/{name}")
        for vhost in (self.vhost, self.other_vhost):
            await self._api("DELETE", f"/vhosts/{vhost}")


TARGETS = {"mysql": MySQLTarget, "redis": RedisTarget, "rabbitmq": RabbitMQTarget}


async def make_target(kind: str, monkeypatch) -> KindTarget:
    target = TARGETS[kind]()
    await target.create()
    monkeypatch.setenv(target.url_env, target.admin_url())
    return target
