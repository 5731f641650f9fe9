"""The server's configuration: a TOML file and/or command-line flags.

Every mistake is an ``InvalidInput`` that names the file and the table and key
(``models.llm.contxt_length: unknown key; known: ...``), raised before anything
loads or binds.

    [server]                      # all optional
    host = "127.0.0.1"            # loopback unless told otherwise
    port = 8000
    api_keys = ["sk-..."]         # or MPOOL_API_KEYS="k1,k2" in the environment
    allow_private_urls = false    # image URLs resolving to private/loopback addresses
    grace_period = 30             # SIGTERM: seconds for in-flight work, then cancel
    load_timeout = 600            # each preload

    [limits]
    max_body_mb = 32              # request body
    max_tokens = 4096             # per generation (also the default when a request names none)
    max_batch = 2048              # inputs per embedding / documents per rerank request
    max_image_side = 2048         # generated images
    max_images = 4                # images per generation request (n)
    max_image_mb = 16             # each image a request sends or points to

    [pool]                        # mpool.Pool's arguments
    request_timeout = 60
    keep_alive = 300
    memory_budget_mb = { cpu = 8000 }

    [models.minilm]
    path = "/models/all-MiniLM-L6-v2"   # a directory or a cached repo id
    preload = true                      # load at start; /ready waits for it
    pinned = true

    [models.custom]
    python = "my_package.models:make"   # a callable returning an mpool model (PyModel, NativeModel)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .. import _validate as v
from ..errors import InvalidInput

__all__ = ["Limits", "ModelEntry", "ServerConfig", "load_config", "parse_duration"]

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


# Go's time.Duration limit (2**63 ns), which Ollama's durations share.
MAX_DURATION_S = 2**63 / 1e9


def parse_duration(name: str, x: Any) -> float:
    """Seconds from a number or an Ollama-style duration string ("30s", "5m", "1h", "-1").

    A negative value means "never" (returned as -1.0); NaN, booleans and other
    strings are InvalidInput naming ``name``.
    """
    if isinstance(x, str):
        m = _DURATION.match(x)
        if not m:
            raise InvalidInput(f"{name} must be seconds or a duration like '30s', '5m', '1h' or '-1', got {x!r}")
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        seconds = float(x)
        if math.isnan(seconds):
            raise InvalidInput(f"{name} must be a number of seconds, got NaN")
    else:
        raise InvalidInput(f"{name} must be seconds or a duration string, got {v._show(x)}")
    if seconds > MAX_DURATION_S:  # Ollama's (Go's) durations end at about 292 years too
        raise InvalidInput(f"{name} is {x!r}, longer than the longest duration, {MAX_DURATION_S:.0f} s; "
                           "a negative value keeps the model loaded for good")
    return -1.0 if seconds < 0 else seconds


@dataclass
class Limits:
    """What one request may ask for; larger requests are refused with 400 (413 for the body)."""

    max_body_mb: float = 32.0
    max_tokens: int = 4096
    max_batch: int = 2048
    max_image_side: int = 2048
    max_images: int = 4
    max_image_mb: float = 16.0
    max_choices: int = 8

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mb * (1 << 20))


@dataclass
class ModelEntry:
    """One model the server registers."""

    key: str
    path: str | None = None
    python: str | None = None
    device: str | None = None
    devices: list[str] | None = None
    dtype: str | None = None
    max_replicas: int | None = None
    pinned: bool | None = None
    keep_alive: float | None = None
    context_length: int | None = None
    options: dict[str, Any] | None = None
    preload: bool = False


@dataclass
class ServerConfig:
    """Everything ``python -m mpool serve`` needs; ``load_config`` builds it."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: list[str] = field(default_factory=list)
    allow_private_urls: bool = False
    grace_period: float = 30.0
    load_timeout: float = 600.0
    limits: Limits = field(default_factory=Limits)
    pool: dict[str, Any] = field(default_factory=dict)
    models: list[ModelEntry] = field(default_factory=list)

    def pool_kwargs(self) -> dict[str, Any]:
        """``mpool.Pool``'s arguments: the [pool] table plus what the server's settings imply."""
        return {
            **self.pool,
            "allow_private_urls": self.allow_private_urls,
            "max_image_bytes": self.limits.max_image_bytes,
        }


_POOL_KEYS = (
    "memory_fraction", "request_timeout", "keep_alive", "reserve_mb", "memory_budget_mb", "max_queue",
    "cold_start_replicas", "scale_up_queue_depth", "scale_up_after", "scale_down_after", "maintenance_interval",
    "fetch_timeout",
)


def _known(where: str, table: Mapping[str, Any], known: Sequence[str]) -> None:
    for k in table:
        if k not in known:
            raise InvalidInput(f"{where}.{k}: unknown key; known: {', '.join(known)}")


def _table(where: str, x: Any) -> Mapping[str, Any]:
    if not isinstance(x, Mapping):
        raise InvalidInput(f"{where} must be a table, got {v._show(x)}")
    return x


def _str_list(name: str, x: Any) -> list[str]:
    if isinstance(x, str) or not isinstance(x, Sequence):
        raise InvalidInput(f"{name} must be a list of strings, got {v._show(x)}")
    return [v.text(f"{name}[{i}]", s, allow_empty=False) for i, s in enumerate(x)]


def model_key(name: str, key: Any) -> str:
    """A model key as the server's routes take it (the OpenAI ``model`` field)."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise InvalidInput(
            f"{name}: model keys are 1-128 letters, digits and . _ : / @ + - starting with a letter or digit, "
            f"got {v._show(key)}"
        )
    return key


def _model(where: str, key: str, t: Mapping[str, Any]) -> ModelEntry:
    known = [f.name for f in fields(ModelEntry) if f.name != "key"]
    _known(where, t, known)
    entry = ModelEntry(key=model_key(where, key))
    if ("path" in t) == ("python" in t):
        raise InvalidInput(f"{where}: give exactly one of path (a model directory or repo id) or python (module:callable)")
    if "path" in t:
        entry.path = v.text(f"{where}.path", t["path"], allow_empty=False)
    if "python" in t:
        target = v.text(f"{where}.python", t["python"], allow_empty=False)
        if target.count(":") != 1:
            raise InvalidInput(f"{where}.python must be 'module:callable', got {target!r}")
        entry.python = target
    if "device" in t:
        entry.device = v.text(f"{where}.device", t["device"], allow_empty=False)
    if "devices" in t:
        entry.devices = _str_list(f"{where}.devices", t["devices"])
    if entry.device is not None and entry.devices is not None:
        raise InvalidInput(f"{where}: give device or devices, not both")
    if "dtype" in t:
        entry.dtype = v.text(f"{where}.dtype", t["dtype"], allow_empty=False)
    if "max_replicas" in t:
        entry.max_replicas = v.int_in(f"{where}.max_replicas", t["max_replicas"], 1, 1024)
    if "pinned" in t:
        entry.pinned = v.flag(f"{where}.pinned", t["pinned"])
    if "keep_alive" in t:
        entry.keep_alive = parse_duration(f"{where}.keep_alive", t["keep_alive"])
    if "context_length" in t:
        entry.context_length = v.int_in(f"{where}.context_length", t["context_length"], 1, v.INT32_MAX)
    if "options" in t:
        entry.options = dict(_table(f"{where}.options", t["options"]))
    if "preload" in t:
        entry.preload = v.flag(f"{where}.preload", t["preload"])
    if entry.python is not None and (entry.dtype or entry.context_length or entry.options):
        raise InvalidInput(f"{where}: dtype, context_length and options apply to path models, not python ones")
    return entry


def _limits(where: str, t: Mapping[str, Any]) -> Limits:
    known = [f.name for f in fields(Limits)]
    _known(where, t, known)
    lim = Limits()
    if "max_body_mb" in t:
        lim.max_body_mb = v.finite(f"{where}.max_body_mb", t["max_body_mb"], lo=0, lo_open=True, hi=4096)
    if "max_tokens" in t:
        lim.max_tokens = v.int_in(f"{where}.max_tokens", t["max_tokens"], 1, v.INT32_MAX)
    if "max_batch" in t:
        lim.max_batch = v.int_in(f"{where}.max_batch", t["max_batch"], 1, 1 << 24)
    if "max_image_side" in t:
        lim.max_image_side = v.int_in(f"{where}.max_image_side", t["max_image_side"], 1, 16384)
    if "max_images" in t:
        lim.max_images = v.int_in(f"{where}.max_images", t["max_images"], 1, 64)
    if "max_choices" in t:
        lim.max_choices = v.int_in(f"{where}.max_choices", t["max_choices"], 1, 256)
    if "max_image_mb" in t:
        lim.max_image_mb = v.finite(f"{where}.max_image_mb", t["max_image_mb"], lo=0, lo_open=True, hi=2047)
    return lim


def config_from_dict(data: Mapping[str, Any], where: str = "config") -> ServerConfig:
    """A ServerConfig from a parsed TOML document; ``where`` names it in errors."""
    _known(where, data, ["server", "limits", "pool", "models"])
    cfg = ServerConfig()
    server = _table(f"{where}: server", data.get("server", {}))
    _known(f"{where}: server", server, ["host", "port", "api_keys", "allow_private_urls", "grace_period", "load_timeout"])
    if "host" in server:
        cfg.host = v.text(f"{where}: server.host", server["host"], allow_empty=False)
    if "port" in server:
        cfg.port = v.int_in(f"{where}: server.port", server["port"], 0, 65535)
    if "api_keys" in server:
        cfg.api_keys = _str_list(f"{where}: server.api_keys", server["api_keys"])
    if "allow_private_urls" in server:
        cfg.allow_private_urls = v.flag(f"{where}: server.allow_private_urls", server["allow_private_urls"])
    if "grace_period" in server:
        cfg.grace_period = v.duration(f"{where}: server.grace_period", server["grace_period"], allow_zero=True)
    if "load_timeout" in server:
        cfg.load_timeout = v.duration(f"{where}: server.load_timeout", server["load_timeout"])
    cfg.limits = _limits(f"{where}: limits", _table(f"{where}: limits", data.get("limits", {})))
    pool = dict(_table(f"{where}: pool", data.get("pool", {})))
    _known(f"{where}: pool", pool, _POOL_KEYS)
    cfg.pool = pool
    models = _table(f"{where}: models", data.get("models", {}))
    cfg.models = [_model(f"{where}: models.{k}", k, _table(f"{where}: models.{k}", t)) for k, t in models.items()]
    return cfg


def load_config(path: str | os.PathLike[str] | None) -> ServerConfig:
    """Reads a TOML config file (None: the defaults, no models)."""
    if path is None:
        return ServerConfig()
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    where = os.fspath(path)
    try:
        with open(where, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise InvalidInput(f"cannot read the server config {where}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"{where} is not valid TOML: {e}") from None
    return config_from_dict(data, where)


def add_cli_models(cfg: ServerConfig, specs: Sequence[str], preload: bool) -> None:
    """Adds ``--model KEY=PATH`` entries (a key already in the file is an error)."""
    taken = {m.key for m in cfg.models}
    for spec in specs:
        key, sep, path = spec.partition("=")
        if not sep or not path:
            raise InvalidInput(f"--model must be KEY=PATH (a model directory or repo id), got {spec!r}")
        key = model_key(f"--model {spec!r}", key)
        if key in taken:
            raise InvalidInput(f"--model {spec!r}: the key {key!r} is given twice")
        taken.add(key)
        cfg.models.append(ModelEntry(key=key, path=path, preload=preload))


def api_keys_from_env(cfg: ServerConfig, environ: Mapping[str, str] = os.environ) -> None:
    """Adds the comma-separated keys of MPOOL_API_KEYS (kept off the command line, where ps shows them)."""
    raw = environ.get("MPOOL_API_KEYS", "")
    cfg.api_keys += [k.strip() for k in raw.split(",") if k.strip()]
