"""Run the API with uvicorn as a task inside the gateway's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

logger = logging.getLogger(__name__)


class ApiServerError(RuntimeError):
    """The API server could not start (e.g. the port is in use) or failed while running."""


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the host process (the runtime).

    Its housekeeping loop ticks once a second instead of uvicorn's ten times: the Date header
    is refreshed once a second either way, and `request_exit` wakes the loop at once, so a stop
    is not delayed (issue #8: nine fewer event-loop wake-ups per second on an idle gateway).
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit_requested = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        counter = 0  # uvicorn's on_tick refreshes the Date header when counter % 10 == 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864_000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_requested.wait(), 1.0)

    def request_exit(self) -> None:
        """Begin the graceful shutdown now (as uvicorn's ``should_exit``, without the wait)."""
        self.should_exit = True
        self._exit_requested.set()


class ApiServer:
    """Serve a FastAPI app on a TCP port from within a running event loop.

    Usage::

        server = ApiServer(create_app(runtime), "127.0.0.1", 0)
        port = await server.start()  # the bound port, also for port 0
        ...
        await server.stop()

    Args:
        app: The ASGI app from `gateway.api.app.create_app`.
        host: Bind address; loopback by default (S9).
        port: TCP port [0..65535]; 0 picks a free port.
        timeout_keep_alive: Idle keep-alive connections are closed after this [s].
        limit_concurrency: Maximum concurrent connections/tasks before 503, or None.
        startup_timeout: How long `start` waits for the socket to be bound [s].
    """

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        timeout_keep_alive: int = 5,
        limit_concurrency: int | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            log_config=None,  # keep the gateway's logging setup
            access_log=False,
            lifespan="on",
            server_header=False,
            timeout_keep_alive=timeout_keep_alive,
            limit_concurrency=limit_concurrency,
        )
        self._startup_timeout = startup_timeout
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._port: int | None = None

    @property
    def port(self) -> int | None:
        """The bound TCP port while running, else None."""
        return self._port

    @property
    def url(self) -> str | None:
        """Base URL ``http://host:port`` while running, else None."""
        if self._port is None:
            return None
        host = self._config.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self._port}"

    async def start(self) -> int:
        """Bind the socket and serve in a background task.

        Returns:
            The bound TCP port (the real one when the configured port is 0).

        Raises:
            ApiServerError: Already started, the bind failed, the app's lifespan failed or the
                server did not come up within ``startup_timeout``.
        """
        if self._task is not None:
            msg = "API server already started"
            raise ApiServerError(msg)
        server = _EmbeddedServer(self._config)
        self._server = server
        self._task = asyncio.create_task(self._serve(server), name="api-server")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._startup_timeout
        while not server.started:
            if self._task.done():
                task = self._task
                self._reset()
                exc = None if task.cancelled() else task.exception()
                if isinstance(exc, ApiServerError):
                    raise exc
                msg = f"API server on {self._config.host}:{self._config.port} did not start"
                raise ApiServerError(msg) from exc
            if loop.time() > deadline:
                await self.stop()
                msg = f"API server on {self._config.host}:{self._config.port} start timed out"
                raise ApiServerError(msg)
            await asyncio.sleep(0.01)
        self._port = int(server.servers[0].sockets[0].getsockname()[1])
        logger.info("api: listening on %s", self.url)
        return self._port

    async def stop(self, grace: float = 5.0) -> None:
        """Stop serving: close the listener, finish requests in flight, run the lifespan end.

        Args:
            grace: After this [s] open connections are dropped (uvicorn force exit).
        """
        server, task = self._server, self._task
        if server is None or task is None:
            return
        # End live streams first: uvicorn waits for open responses before it exits.
        hub = getattr(getattr(self._config.app, "state", None), "stream_hub", None)
        if hub is not None:
            hub.close()
        server.request_exit()
        done, _ = await asyncio.wait({task}, timeout=grace)
        if not done:
            server.force_exit = True
            done, _ = await asyncio.wait({task}, timeout=grace)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif not task.cancelled() and task.exception() is not None:
            logger.warning("api: server ended with an error: %s", task.exception())
        self._reset()

    def _reset(self) -> None:
        self._server = None
        self._task = None
        self._port = None

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @staticmethod
    async def _serve(server: uvicorn.Server) -> None:
        """Run uvicorn; its ``sys.exit`` on startup failure becomes an `ApiServerError`."""
        try:
            await server.serve()
        except SystemExit as exc:
            # uvicorn exits the process when the bind or the lifespan startup fails.
            msg = (
                f"API server on {server.config.host}:{server.config.port} failed to start "
                f"(exit code {exc.code}); see the log for the cause"
            )
            raise ApiServerError(msg) from None
