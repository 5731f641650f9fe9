"""Chat templates: renders a model's Jinja chat template the way transformers'
`apply_chat_template(..., tokenize=False)` does.

>>> tpl = ChatTemplate.from_model_dir("path/to/model")
>>> prompt = tpl.render([{"role": "user", "content": "Hi"}])
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import _core
from ._images import image_input
from ._signature import checked_calls
from .errors import InvalidInput

__all__ = ["ChatTemplate", "split_images"]

# The keys a content part of type "image" may carry its image under, as transformers reads them.
_IMAGE_KEYS = ("image", "url", "path")

# The named special tokens transformers passes to every template (as strings).
_SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
# Older names for a message's reasoning; templates read `reasoning_content` (gpt-oss reads `thinking`).
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


class _TemplateRaised(jinja2.exceptions.TemplateError):
    """Raised by the template's own `raise_exception(...)` call."""


def _raise_exception(message: object) -> None:
    raise _TemplateRaised(str(message))


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Unlike Jinja's own tojson: no HTML escaping, non-ASCII kept, json.dumps options exposed.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _DictFactory:
    """`dict(...)` / `dict.fromkeys(...)` for templates, without exposing the type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, keys: Any, value: Any = None) -> dict[Any, Any]:
        return dict.fromkeys(keys, value)


class _SafeNamespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore-prefixed attribute names."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for key in attrs:
            _SafeNamespace._check(key)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _SafeNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} may not start with '_'")


class _GenerationTag(jinja2.ext.Extension):
    """Accepts `{% generation %}...{% endgeneration %}` (used for assistant masks) and renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


@functools.lru_cache(maxsize=64)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _DictFactory()
    env.globals["namespace"] = _SafeNamespace
    return env.from_string(source)


def _plain(value: Any) -> Any:
    """A copy made of plain JSON-like types: what the sandboxed template may see."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":  # numpy scalars
        return _plain(item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)
    if callable(dump):  # pydantic models
        return _plain(dump())
    return f"<{type(value).__name__}>"


def _token_text(value: Any) -> str | None:
    """A special token from a tokenizer config: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _refuse_bytes_content(i: int, content: Any) -> None:
    # A template would see bytes as a type name (or bytearray as a list of ints): a text was meant.
    if isinstance(content, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"messages[{i}]['content'] must be a str or a list of parts, not {type(content).__name__}")


def split_images(messages: Any) -> tuple[Any, list[tuple[str, Any]]]:
    """The messages as the template sees them, and their images in order.

    Each content part ``{"type": "image", "image": <any image input>}`` (or ``"url"``,
    ``"path"``) becomes ``{"type": "image"}``, where the template writes the model's
    image placeholder; its image goes to the list. Messages without image parts are
    returned as they are (``render`` checks their shape).
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        return messages, []
    images: list[tuple[str, Any]] = []
    out: list[Any] = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        _refuse_bytes_content(i, content)
        if isinstance(content, str) or not isinstance(content, Sequence):
            out.append(message)
            continue
        parts: list[Any] = []
        for j, part in enumerate(content):
            if not (isinstance(part, Mapping) and part.get("type") == "image"):
                parts.append(part)
                continue
            sources = [k for k in _IMAGE_KEYS if part.get(k) is not None]
            if len(sources) != 1:
                raise InvalidInput(
                    f"messages[{i}].content[{j}] is an image part; it needs its image under exactly one of "
                    f"{', '.join(repr(k) for k in _IMAGE_KEYS)}"
                    + (f" (it has {', '.join(repr(k) for k in sources)})" if sources else "")
                )
            images.append(image_input(part[sources[0]], len(images)))
            parts.append({k: v for k, v in part.items() if k not in _IMAGE_KEYS})
        out.append({**message, "content": parts})
    return out, images


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidInput(f"cannot read {path}: {e}") from e


@checked_calls
class ChatTemplate:
    """One model's chat template(s) plus the special tokens the template can use."""

    def __init__(
        self,
        templates: Mapping[str, str],
        special_tokens: Mapping[str, str] | None = None,
        *,
        sources: Mapping[str, str] | None = None,
    ) -> None:
        """`templates` maps names to Jinja sources (a single template is named "default");
        `sources` names where each came from, for error messages."""
        if not templates:
            raise InvalidInput("a ChatTemplate needs at least one template")
        self.templates: dict[str, str] = dict(templates)
        self.special_tokens: dict[str, str] = dict(special_tokens or {})
        self._sources = dict(sources or {})
        self._compiled: dict[str, jinja2.Template] = {}
        for name, source in self.templates.items():
            try:
                self._compiled[name] = _compile(source)
            except jinja2.exceptions.TemplateSyntaxError as e:
                where = self._sources.get(name, f"chat template {name!r}")
                raise InvalidInput(f"chat template syntax error in {where}, line {e.lineno}: {e.message}") from e

    @classmethod
    def from_model_dir(cls, path: str | os.PathLike[str]) -> ChatTemplate | None:
        """Reads the template(s) and special tokens of a HF model directory; None without a template.

        The templates are read by the extension's one reader (``mpool.inspect`` reports
        the same names), in transformers' order: chat_template.jinja ("default") and
        additional_chat_templates/<name>.jinja; when none of those files exists,
        tokenizer_config.json's "chat_template" (a string or a list of {name, template});
        chat_template.json (the processor file) when neither has one.
        """
        # The folder inspect reads too: a sentence-transformers layout keeps the
        # tokenizer beside its Transformer module, in a subfolder.
        root = Path(_core._tokenizer_dir(os.fspath(path)))
        config_path = root / "tokenizer_config.json"
        config: Mapping[str, Any] = {}
        if config_path.is_file():
            loaded = _read_json(config_path)
            if not isinstance(loaded, Mapping):
                raise InvalidInput(f"{config_path} is not a JSON object")
            config = loaded
        found = _core._chat_templates(os.fspath(root))
        if not found:
            return None
        templates = {name: text for name, (text, _) in found.items()}
        sources = {name: where for name, (_, where) in found.items()}
        return cls(templates, cls._special_tokens(root, config), sources=sources)

    @staticmethod
    def _special_tokens(root: Path, config: Mapping[str, Any]) -> dict[str, str]:
        tokens: dict[str, str] = {}
        for name in _SPECIAL_TOKEN_NAMES:
            text = _token_text(config.get(name))
            if text is not None:
                tokens[name] = text
        # transformers 5 exposes named model-specific tokens (e.g. image_token) as attributes too.
        extra = config.get("extra_special_tokens")
        if isinstance(extra, Mapping):
            for name, value in extra.items():
                text = _token_text(value)
                if isinstance(name, str) and text is not None:
                    tokens.setdefault(name, text)
        map_path = root / "special_tokens_map.json"
        if map_path.is_file():
            legacy = _read_json(map_path)
            if isinstance(legacy, Mapping):
                for name in _SPECIAL_TOKEN_NAMES:
                    text = _token_text(legacy.get(name))
                    if text is not None:
                        tokens.setdefault(name, text)
        return tokens

    def _select(self, template_name: str | None, has_tools: bool) -> str:
        if template_name is not None:
            if template_name not in self._compiled:
                raise InvalidInput(
                    f"no chat template named {template_name!r}; this model has {sorted(self._compiled)}"
                )
            return template_name
        # As transformers' get_chat_template: named templates without a "default" (even a
        # single one, e.g. only additional_chat_templates/tool_use.jinja) need a name or tools.
        if has_tools and "tool_use" in self._compiled:
            return "tool_use"
        if "default" in self._compiled:
            return "default"
        raise InvalidInput(
            f"this model's chat templates {sorted(self._compiled)} include no 'default'; "
            "pass template_name= one of them (or tools=, for 'tool_use')"
        )

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        template_name: str | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text for `messages`; extra kwargs become template variables (overriding special tokens)."""
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or len(messages) == 0:
            raise InvalidInput("messages must be a non-empty list of {'role': str, 'content': ...} mappings")
        chat: list[dict[str, Any]] = []
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping):
                raise InvalidInput(f"messages[{i}] must be a mapping, not {type(message).__name__}")
            if not isinstance(message.get("role"), str):
                raise InvalidInput(f"messages[{i}] needs a string 'role'")
            _refuse_bytes_content(i, message.get("content"))
            # Like transformers: keys whose value is None are dropped (e.g. OpenAI's content=None).
            plain = _plain({k: v for k, v in message.items() if v is not None})
            reasoning = next((plain[k] for k in _REASONING_KEYS if plain.get(k) is not None), None)
            if reasoning is not None:
                plain = {"thinking": reasoning, **plain, "reasoning_content": reasoning}
            chat.append(plain)
        if tools is not None:
            if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
                raise InvalidInput("tools must be a list of JSON-schema mappings")
            for i, tool in enumerate(tools):
                if not isinstance(tool, Mapping):
                    raise InvalidInput(f"tools[{i}] must be a JSON-schema mapping, not {type(tool).__name__}")
        if documents is not None:
            if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
                raise InvalidInput("documents must be a list of mappings")
            for i, doc in enumerate(documents):
                if not isinstance(doc, Mapping):
                    raise InvalidInput(f"documents[{i}] must be a mapping, not {type(doc).__name__}")

        name = self._select(template_name, tools is not None)
        variables: dict[str, Any] = {**self.special_tokens, **_plain(kwargs)}
        try:
            return self._compiled[name].render(
                messages=chat,
                tools=_plain(list(tools)) if tools is not None else None,
                documents=_plain(list(documents)) if documents is not None else None,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except _TemplateRaised as e:
            raise InvalidInput(f"the chat template rejected the messages: {e.message}") from e
        except jinja2.exceptions.TemplateError as e:
            raise InvalidInput(f"the chat template failed: {type(e).__name__}: {e}") from e
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise InvalidInput(f"the chat template failed: {type(e).__name__}: {e}") from e
