"""`recsys serve`: one session's recommendations over HTTP, from the registered champion, in milliseconds.

The model is a registered version's rankers with the freshest live week's sources (`Bundle.serving`)
held by the in-memory scorer (`pipelines.model.scorer`): no Spark in a request. `ServedModel` holds
what is being served; a watcher thread looks every `poll_seconds` for an alias that moved (when the
model URI names one: `models:/session-recommender@champion`, the default) and for a later week's
sources gone live in the lake, loads the new version or sources beside the ones serving, and swaps
the reference in one assignment: a request runs on the model it started with, none fails during
the swap.

    GET  /health     {"status": "ok", "model": {"name", "version", "week", "trained_week", "uri"}}
                     (`week`: the week whose sources it serves with)
    POST /recommend  {"session": 42, "events": [{"aid": 7, "ts": 1661200010000, "type": "clicks"}, ...]}
                  -> {"session": 42, "model_version": "7", "recommendations": {"clicks": [...], "carts": [...], "orders": [...]}}

Bad input gets a 4xx JSON body naming the field (`{"error", "field", "detail"}`), never a traceback.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint's annotations at definition
# time, and the request models are local to `create_app` (their event cap is its argument).
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Literal

from pipelines.vocabulary import EVENT_TYPES

log = logging.getLogger("recsys.serve")

# What one request may carry: a body of at most this many bytes, and at most the `sessions` asset's
# history cap of events (RECSYS_MAX_SESSION_EVENTS).
MAX_BODY_BYTES = 1_000_000
DEFAULT_POLL_SECONDS = 30.0
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    week: str | None  # the week whose sources it serves with
    trained_week: str | None
    lake_root: str | None  # where later weeks' sources appear
    scorer: object  # pipelines.model.scorer.InMemoryScorer

    def describe(self, uri: str) -> dict:
        return {"name": self.name, "version": self.version, "week": self.week, "trained_week": self.trained_week,
                "uri": uri}


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> (name, alias, version)."""
    match = MODEL_URI.match(uri)
    if not match:
        raise ValueError(f"model URI {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return match["name"], match["alias"], match["version"]


def load_registered(tracking_uri: str, name: str, version: str) -> LoadedModel:
    """A registered version's rankers (from the artifact store) with the freshest live week's sources
    (`Bundle.serving`) in the in-memory scorer."""
    from pipelines.model import load_version
    from pipelines.model.scorer import InMemoryScorer

    registered = load_version(tracking_uri, name, version)
    served = registered.bundle.serving()
    return LoadedModel(name=name, version=registered.version, week=served.sources_week,
                       trained_week=registered.bundle.info.get("week"), lake_root=registered.bundle.lake_root(),
                       scorer=InMemoryScorer.from_bundle(served))



class ServedModel:
    """The version being served, and (for an alias) the watcher that follows the alias."""

    def __init__(self, uri: str, tracking_uri: str, poll_seconds: float = DEFAULT_POLL_SECONDS):
        self.uri, self.tracking_uri, self.poll_seconds = uri, tracking_uri, poll_seconds
        self.name, self.alias, self.pinned_version = parse_model_uri(uri)
        self.current: LoadedModel = load_registered(tracking_uri, self.name, self.pinned_version or self._alias_version())
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def _alias_version(self) -> str:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            return str(MlflowClient(tracking_uri=self.tracking_uri).get_model_version_by_alias(self.name, self.alias).version)
        except MlflowException as error:
            raise LookupError(f"no '{self.alias}' version of registered model {self.name!r} at {self.tracking_uri}: "
                              f"{error.message}") from None

    def start_watching(self) -> None:
        if self.poll_seconds <= 0:
            return
        self._watcher = threading.Thread(target=self._watch, name="alias-watcher", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()

    def refresh(self) -> bool:
        """Load and swap in the alias's version if it moved, or the served version with a later week's
        sources once they are live; True when it swapped."""
        version = self.pinned_version or self._alias_version()
        if version == self.current.version and self._bundle_sources_week() == self.current.week:
            return False
        started = time.perf_counter()
        loaded = load_registered(self.tracking_uri, self.name, version)
        previous, self.current = self.current.version, loaded  # one assignment: requests see old or new, whole
        log.info("serving %s v%s (was v%s), loaded in %.1f s", self.name, version, previous, time.perf_counter() - started)
        return True

    def _bundle_sources_week(self) -> str | None:
        """The week whose sources the served version reads once reloaded."""
        from pipelines.model.bundle import serving_week

        root = self.current.lake_root
        return self.current.week if root is None else serving_week(root, self.current.week)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
                self.last_error = None
            except Exception as error:  # noqa: BLE001 - the served version stays; /health shows why
                self.last_error = f"{type(error).__name__}: {error}"[:500]
                log.warning("could not follow %s: %s", self.uri, self.last_error)


def create_app(served: ServedModel, max_events: int = 500):
    """The FastAPI app over `served`."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from pydantic import BaseModel, ConfigDict, Field, StrictInt

    class Event(BaseModel):
        model_config = ConfigDict(extra="forbid")
        aid: StrictInt = Field(ge=0)
        ts: StrictInt = Field(ge=0)
        type: Literal[tuple(EVENT_TYPES)]  # type: ignore[valid-type]

    class Session(BaseModel):
        model_config = ConfigDict(extra="forbid")
        session: StrictInt = Field(ge=0)
        events: list[Event] = Field(min_length=1, max_length=max_events)

    app = FastAPI(title="session-recsys", summary="Live session recommendations from the registered champion")

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {"loc": ("body",), "msg": "invalid request"}
        malformed = first.get("type") == "json_invalid"
        location = [] if malformed else [str(part) for part in first.get("loc", ()) if part != "body"]
        return _error(400 if malformed else 422, ".".join(location) or "body", first.get("msg", "invalid"),
                      errors=len(error.errors()))

    @app.exception_handler(Exception)
    async def failed(_request: Request, error: Exception):
        log.exception("request failed")
        return _error(500, None, f"internal error ({type(error).__name__})")

    @app.get("/health")
    def health() -> dict:
        body = {"status": "ok", "model": served.current.describe(served.uri)}
        if served.last_error:
            body["alias_error"] = served.last_error
        return body

    @app.post("/recommend")
    def recommend(session: Session) -> dict:
        model = served.current  # one read: the whole request runs on this version
        return {"session": session.session, "model_version": model.version,
                "recommendations": recommend_one(model.scorer, session.session,
                                                 [event.model_dump() for event in session.events], max_events)}

    return app


def recommend_one(scorer, session: int, events: list[dict], max_events: int = 500) -> dict[str, list[int]]:
    """Top-20 aids per type for one session's events, as `recsys predict` ranks them."""
    lists = scorer.recommend_session(session, events, max_events)
    return {event_type: lists.get(event_type, []) for event_type in EVENT_TYPES}


class BodyLimit:
    """ASGI middleware: a declared length over `limit` is refused before the body is read, and an
    undeclared (chunked) body as soon as the bytes received pass it: at most `limit` bytes are held."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _error_response_too_large()(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await _error_response_too_large()(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def _error_response_too_large():
    return _error(413, "body", f"the body is over {MAX_BODY_BYTES} bytes")


def _error(status: int, field: str | None, detail: str, **extra):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": detail, "field": field, "detail": detail, **extra})


def serve(model_uri: str, tracking_uri: str, host: str = "127.0.0.1", port: int = 8000,
          poll_seconds: float = DEFAULT_POLL_SECONDS, max_events: int = 500) -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    served = ServedModel(model_uri, tracking_uri, poll_seconds)
    log.info("serving %s v%s (week %s) on http://%s:%d", served.name, served.current.version, served.current.week,
             host, port)
    served.start_watching()
    try:
        uvicorn.run(create_app(served, max_events), host=host, port=port, log_level="warning")
    finally:
        served.stop()
