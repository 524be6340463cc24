"""The operational HTTP surface: /metrics, /healthz, /readyz and the /api (API key required)."""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runtime import topics
from runtime.errors import CommandArgumentsError, UnknownCommand
from runtime.manager import Status

if TYPE_CHECKING:
    from runtime.app import Runtime

_log = logging.getLogger("runtime.http")
_SECRET_KEY = re.compile(r"password|token|secret|credential|private", re.IGNORECASE)
REDACTED = "***"
_encode = msgspec.json.Encoder().encode
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def redact(value: Any) -> Any:
    """Settings with every secret-looking key's value replaced."""
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(data), status=status, content_type="application/json")


class HttpApi:
    """One aiohttp server configured by `http:` in the settings."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/api/systems", self.systems)
        app.router.add_get("/api/systems/{id}", self.system)
        app.router.add_get("/api/modules/{id}", self.module)
        app.router.add_post("/api/modules/{id}/exec/{command}", self.execute)
        app.router.add_post("/api/reload", self.reload)
        return app

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (port 0 picks a free one)."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        _log.info("HTTP on http://%s:%s (/metrics /healthz /readyz%s)", host, self.port,
                  " /api" if self._keys() else "; /api is off: no api_keys")

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _keys(self) -> list[str]:
        plan = self.runtime.plan
        return [k for k in plan.site.http.api_keys if k] if plan is not None else []

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api"):
            return await handler(request)
        keys = self._keys()
        if not keys:
            return _json({"error": "the API is off: no api_keys configured"}, 404)
        given = request.headers.get("X-API-Key", "").encode()
        # Compare with every key, always, so the timing says nothing about which one almost matched.
        valid = False
        for key in keys:
            valid |= hmac.compare_digest(given, key.encode())
        if not valid:
            return _json({"error": "missing or invalid X-API-Key"}, 401)
        return await handler(request)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text format."""
        if self.runtime.manager is not None:
            self.runtime.manager.update_gauges()
        if self.runtime.publisher is not None:
            self.runtime.publisher.sync_metrics()
        body = generate_latest(self.runtime.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        """Alive."""
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready when every broker is connected and no module is failing."""
        publisher, manager = self.runtime.publisher, self.runtime.manager
        brokers = [o.name for o in publisher.outputs if not o.session.connected] if publisher else ["(starting)"]
        failing = sorted(mid for mid, h in manager.hosts.items() if h.status is Status.FAILED) if manager else []
        if brokers or failing:
            return _json({"ready": False, "brokers_disconnected": brokers, "modules_failing": failing}, 503)
        return _json({"ready": True})

    def _system(self, system_id: str) -> dict[str, Any] | None:
        plan = self.runtime.plan
        if plan is None or system_id not in plan.systems:
            return None
        sp = plan.systems[system_id]
        spec = msgspec.json.decode(plan.metadata[topics.metadata_topic(plan.org, system_id)])
        modules = []
        for ref, module_id in sp.refs.items():
            module = plan.modules[module_id]
            binding = next(b for b in module.bindings if b.system == system_id)
            modules.append({"id": module_id, "ref": ref, "name": module.name, "driver": module.driver_id,
                            "idx": binding.idx, "prefix": binding.prefix})
        return {"id": system_id, "name": spec["name"], "description": spec.get("description"), "zones": spec["zones"],
                "levels": dict(zip(plan.site.hierarchy, sp.levels, strict=True)), "modules": modules}

    async def systems(self, request: web.Request) -> web.Response:
        """Every system with its modules and topic prefixes."""
        plan = self.runtime.plan
        ids = list(plan.systems) if plan is not None else []
        return _json([self._system(i) for i in ids])

    async def system(self, request: web.Request) -> web.Response:
        """One system."""
        found = self._system(request.match_info["id"])
        return _json(found) if found is not None else _json({"error": "unknown system"}, 404)

    async def module(self, request: web.Request) -> web.Response:
        """One module: driver, redacted settings, status, connected, state through `http.privacy`."""
        manager, plan = self.runtime.manager, self.runtime.plan
        module_id = request.match_info["id"]
        host = manager.hosts.get(module_id) if manager is not None else None
        if host is None or plan is None:
            return _json({"error": "unknown module"}, 404)
        state: dict[str, Any] = {}
        rules = self.runtime.http_rules
        for key, entry in host.states.items():
            if rules is None:
                state[key] = entry.value
                continue
            scoped = rules.scope(host.driver_id, host.module_id, key)
            if scoped is None:
                state[key] = entry.value
                continue
            if scoped.key is self.runtime.drop:
                continue
            value = scoped.apply(entry.value)
            if value is not self.runtime.drop:
                state[str(scoped.key)] = value
        return _json({"id": module_id, "name": host.name, "driver": host.driver_id, "driver_key": host.plan.driver_key,
                      "status": host.status.value, "connected": host.get_state("connected") is True,
                      "systems": [b.system for b in host.plan.bindings], "prefixes": list(host.prefixes),
                      "settings": redact(host.plan.settings), "state": state,
                      "commands": sorted(host.instance.commands) if host.instance is not None else []})

    async def execute(self, request: web.Request) -> web.Response:
        """Run a command a driver declared."""
        manager = self.runtime.manager
        host = manager.hosts.get(request.match_info["id"]) if manager is not None else None
        if host is None:
            return _json({"error": "unknown module"}, 404)
        instance = host.instance
        name = request.match_info["command"]
        if instance is None:
            return _json({"error": f"module is {host.status.value}"}, 503)
        if name not in instance.commands:
            return _json({"error": f"unknown command {name!r}", "commands": sorted(instance.commands)}, 404)
        body = await request.read()
        try:
            arguments = msgspec.json.decode(body) if body.strip() else {}
        except msgspec.DecodeError as exc:
            return _json({"error": f"body is not JSON: {exc}"}, 400)
        try:
            result = await instance.execute(name, arguments)
        except CommandArgumentsError as exc:
            return _json({"error": str(exc)}, 400)
        except UnknownCommand as exc:
            return _json({"error": str(exc)}, 404)
        except TimeoutError:
            return _json({"error": f"command {name!r} timed out"}, 504)
        except (ValueError, LookupError) as exc:
            return _json({"error": str(exc)}, 400)
        except Exception as exc:
            host.logger.error("command %s failed: %s", name, exc, exc_info=exc)
            return _json({"error": f"command {name!r} failed: {exc}"}, 500)
        try:
            return _json({"result": result})
        except (TypeError, msgspec.EncodeError) as exc:
            return _json({"error": f"command result is not JSON: {exc}"}, 500)

    async def reload(self, request: web.Request) -> web.Response:
        """Re-read the settings file; an invalid file changes nothing and its errors are returned."""
        ok, detail = await self.runtime.reload()
        return _json({"ok": ok, **detail}, 200 if ok else 422)

