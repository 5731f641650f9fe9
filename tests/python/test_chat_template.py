"""mpool.chat.ChatTemplate renders exactly what transformers' apply_chat_template renders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mpool  # noqa: E402
from mpool.errors import InvalidInput  # noqa: E402

try:
    from mpool.chat import ChatTemplate
except ModuleNotFoundError:  # an installed mpool from before chat.py: use this checkout's file
    mpool.__path__.append(str(Path(__file__).resolve().parents[2] / "python" / "mpool"))
    from mpool.chat import ChatTemplate

from decoder_models import CHAT_TEMPLATE, build_decoder, save_tokenizer  # noqa: E402

# --- real-world-style templates (written for these tests) -------------------

CHATML_QWEN2 = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA3 = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

MISTRAL = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}"
    "{% endfor %}"
)

# Multi-line on purpose: only trim_blocks + lstrip_blocks make this come out right.
PHI3 = """{% for message in messages %}
    {% if message['role'] == 'system' %}
<|system|>
{{ message['content'] }}<|end|>
    {% elif message['role'] == 'user' %}
<|user|>
{{ message['content'] }}<|end|>
    {% elif message['role'] == 'assistant' %}
<|assistant|>
{{ message['content'] }}<|end|>
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|assistant|>
{% else %}
{{ eos_token }}
{% endif %}"""

# Hermes/Qwen2.5-style tool use: tojson, namespace, loop controls, tool_calls, tool role.
TOOLS = """{%- if tools %}
<|im_start|>system
{{ messages[0]['content'] if messages[0]['role'] == 'system' else 'You are a helpful assistant.' }}

# Tools

<tools>
{%- for tool in tools %}
{{ "\\n" }}{{ tool | tojson }}
{%- endfor %}
</tools><|im_end|>
{% endif %}
{%- set ns = namespace(seen_user=false) %}
{%- for message in messages %}
    {%- if message.role == 'system' %}{% continue %}{% endif %}
    {%- if message.role == 'user' %}{% set ns.seen_user = true %}{% endif %}
    {%- if message.role == 'assistant' and message.tool_calls is defined %}
<|im_start|>assistant
{%- for tool_call in message.tool_calls %}
<tool_call>
{"name": "{{ tool_call.function.name }}", "arguments": {{ tool_call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
    {%- elif message.role == 'tool' %}
<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
    {%- else %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
    {%- endif %}
    {%- if message.content == 'STOP' %}{% break %}{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""

DATED = """{{- bos_token }}
{%- if strftime_now is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- else %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
<|start_header_id|>system<|end_header_id|>

Today Date: {{ date_string }}
{%- for message in messages %}
<|start_header_id|>{{ message['role'] }}<|end_header_id|>

{{ message['content'] | trim }}<|eot_id|>
{%- endfor %}
{%- if add_generation_prompt %}
<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""

# Qwen3-style: extra kwargs (enable_thinking), reasoning_content, documents, dict(), generation tag.
THINKING = """{%- for message in messages %}
<|im_start|>{{ message.role }}
{%- if message.reasoning_content is defined %}
<think>{{ message.reasoning_content }}</think>
{%- endif %}
{% generation %}{{ message.content }}{% endgeneration %}<|im_end|>
{%- endfor %}
{%- if documents %}
{%- for doc in documents %}
[doc {{ loop.index }}] {{ doc.title }}: {{ doc.text }}
{%- endfor %}
{%- endif %}
{%- set meta = dict(a=1, b=[1, 2]) %}
{{ meta | tojson(sort_keys=true) }} {{ "ünïcode" | tojson }}
{%- if add_generation_prompt %}
<|im_start|>assistant
{%- if enable_thinking is defined and enable_thinking is false %}
<think>

</think>
{%- endif %}
{% endif %}"""

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "  Hello there! 東京 😀  "},
    {"role": "assistant", "content": "Hi. What's up?"},
    {"role": "user", "content": "Tell me a joke.\nA short one."},
]
USER_ASSISTANT = [m for m in CONVERSATION if m["role"] != "system"]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name, e.g. Zürich"}},
            "required": ["city"],
        },
    },
}
TOOL_CONVERSATION = [
    {"role": "system", "content": "Use tools when useful."},
    {"role": "user", "content": "Weather in Zürich?"},
    {
        "role": "assistant",
        "content": None,  # OpenAI-style: dropped before rendering
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}],
    },
    {"role": "tool", "content": '{"temp_c": 21}'},
]


def model_dir(tmp_path: Path, template: object, *, jinja_file: bool = False, name: str = "m") -> Path:
    """A tokenizer-only model directory with `template` in tokenizer_config.json (or chat_template.jinja)."""
    d = tmp_path / name
    d.mkdir()
    if jinja_file:
        save_tokenizer(d, chat_template=None)
        (d / "chat_template.jinja").write_text(str(template), encoding="utf-8")
    else:
        save_tokenizer(d, chat_template=None)
        cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
        cfg["chat_template"] = template
        (d / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return d


def reference(d: Path, messages, **kwargs) -> str:
    from transformers import AutoTokenizer

    kwargs.setdefault("add_generation_prompt", True)
    tok = AutoTokenizer.from_pretrained(str(d))
    out = tok.apply_chat_template(messages, tokenize=False, **kwargs)
    assert isinstance(out, str)
    return out


def ours(d: Path, messages, **kwargs) -> str:
    tpl = ChatTemplate.from_model_dir(d)
    assert tpl is not None
    return tpl.render(messages, **kwargs)


@pytest.mark.parametrize(
    "template, messages",
    [
        (CHATML_QWEN2, USER_ASSISTANT),
        (CHATML_QWEN2, CONVERSATION),
        (LLAMA3, CONVERSATION),
        (MISTRAL, USER_ASSISTANT),
        (PHI3, CONVERSATION),
    ],
    ids=["chatml_default_system", "chatml_own_system", "llama3_bos_trim", "mistral_alternating", "phi3_multiline"],
)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_real_world_templates_render_exactly_like_transformers(tmp_path, template, messages, add_generation_prompt):
    d = model_dir(tmp_path, template)
    expected = reference(d, messages, add_generation_prompt=add_generation_prompt)
    assert ours(d, messages, add_generation_prompt=add_generation_prompt) == expected


def test_template_in_chat_template_jinja_file_renders_like_transformers(tmp_path):
    d = model_dir(tmp_path, PHI3, jinja_file=True)
    assert ours(d, CONVERSATION) == reference(d, CONVERSATION)


def test_tools_tool_calls_and_none_content_render_like_transformers(tmp_path):
    d = model_dir(tmp_path, TOOLS)
    expected = reference(d, TOOL_CONVERSATION, tools=[WEATHER_TOOL])
    assert "get_weather" in expected and '"arguments": {"city": "Zürich"}' in expected
    assert ours(d, TOOL_CONVERSATION, tools=[WEATHER_TOOL]) == expected
    # Without tools the same template takes its other branch.
    assert ours(d, TOOL_CONVERSATION) == reference(d, TOOL_CONVERSATION)


def test_loop_controls_break_and_continue_work_like_transformers(tmp_path):
    d = model_dir(tmp_path, TOOLS)
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "STOP"}, {"role": "user", "content": "b"}]
    expected = reference(d, messages)
    assert "STOP" in expected and "\nb<|im_end|>" not in expected
    assert ours(d, messages) == expected


def test_strftime_now_renders_todays_date_like_transformers(tmp_path):
    d = model_dir(tmp_path, DATED)
    before = ours(d, CONVERSATION)
    expected = reference(d, CONVERSATION)
    after = ours(d, CONVERSATION)
    assert expected in (before, after)  # the date may change between the calls, at midnight
    assert "Today Date: 26 Jul 2024" not in expected


def test_extra_kwargs_documents_reasoning_and_generation_tag_render_like_transformers(tmp_path):
    d = model_dir(tmp_path, THINKING)
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning": "simple sum"},  # aliased to reasoning_content
        {"role": "user", "content": "and 3+3?"},
    ]
    docs = [{"title": "Math", "text": "Addition adds."}, {"title": "More", "text": "ünïcode"}]
    kwargs = dict(documents=docs, enable_thinking=False)
    expected = reference(d, messages, **kwargs)
    assert "<think>simple sum</think>" in expected and "[doc 2] More" in expected
    assert ours(d, messages, **kwargs) == expected


def test_kwargs_override_special_tokens_like_transformers(tmp_path):
    d = model_dir(tmp_path, MISTRAL)
    assert ours(d, USER_ASSISTANT, bos_token="<BOS>") == reference(d, USER_ASSISTANT, bos_token="<BOS>")
    assert ours(d, USER_ASSISTANT, bos_token="<BOS>").startswith("<BOS>[INST]")


def test_named_templates_pick_tool_use_when_tools_are_given_like_transformers(tmp_path):
    d = model_dir(tmp_path, [{"name": "default", "template": CHATML_QWEN2}, {"name": "tool_use", "template": TOOLS}])
    messages = USER_ASSISTANT
    assert ours(d, messages) == reference(d, messages)
    assert ours(d, messages, tools=[WEATHER_TOOL]) == reference(d, messages, tools=[WEATHER_TOOL])
    tpl = ChatTemplate.from_model_dir(d)
    assert tpl is not None
    assert tpl.render(messages, template_name="tool_use") == reference(d, messages, chat_template="tool_use")


def test_added_token_dicts_and_special_tokens_map_provide_the_special_tokens(tmp_path):
    d = model_dir(tmp_path, MISTRAL)
    cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["bos_token"] = {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False,
                        "rstrip": False, "single_word": False, "special": True}
    del cfg["eos_token"]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    (d / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": {"content": "</s>", "lstrip": False, "normalized": False, "rstrip": False}}),
        encoding="utf-8",
    )
    tpl = ChatTemplate.from_model_dir(d)
    assert tpl is not None
    assert tpl.special_tokens["bos_token"] == "<s>" and tpl.special_tokens["eos_token"] == "</s>"
    assert tpl.render(USER_ASSISTANT) == reference(d, USER_ASSISTANT)


def test_compiled_templates_are_shared_between_instances():
    a = ChatTemplate({"default": CHATML_QWEN2})
    b = ChatTemplate({"default": CHATML_QWEN2})
    assert a._compiled["default"] is b._compiled["default"]


def test_model_without_a_template_gives_none(tmp_path):
    d = tmp_path / "plain"
    d.mkdir()
    save_tokenizer(d, chat_template=None)
    assert ChatTemplate.from_model_dir(d) is None
    assert ChatTemplate.from_model_dir(tmp_path / "missing") is None


# --- which templates a model has: one reader, transformers' order ------------------


def transformers_template_names(d: Path) -> list[str]:
    from transformers import AutoTokenizer

    templates = AutoTokenizer.from_pretrained(str(d)).chat_template
    return sorted(templates) if isinstance(templates, dict) else ["default"]


def test_disagreeing_template_sources_inspect_and_chat_both_follow_transformers(tmp_path, pool):
    # Four sources that disagree: tokenizer_config.json's template (CHAT_TEMPLATE, from
    # build_decoder), chat_template.jinja, additional_chat_templates/tool_use.jinja and the
    # legacy chat_template.json. transformers takes the two files and ignores the others.
    d = build_decoder(tmp_path, "llama")
    assert json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"] == CHAT_TEMPLATE
    (d / "chat_template.jinja").write_text(CHATML_QWEN2, encoding="utf-8")
    (d / "additional_chat_templates").mkdir()
    (d / "additional_chat_templates" / "tool_use.jinja").write_text(TOOLS, encoding="utf-8")
    (d / "chat_template.json").write_text(json.dumps({"chat_template": LLAMA3}), encoding="utf-8")

    assert transformers_template_names(d) == ["default", "tool_use"]
    assert mpool.inspect(d)["files"]["tokenizer"]["chat_templates"] == ["default", "tool_use"]

    pool.register("m", d)
    plain = reference(d, USER_ASSISTANT)
    with_tools = reference(d, USER_ASSISTANT, tools=[WEATHER_TOOL])
    assert plain.startswith("<|im_start|>system\nYou are a helpful assistant.")  # chat_template.jinja's
    assert "<tools>" in with_tools  # tool_use.jinja's
    assert pool.render_chat("m", USER_ASSISTANT) == plain
    assert pool.render_chat("m", USER_ASSISTANT, tools=[WEATHER_TOOL]) == with_tools


def test_additional_templates_alone_replace_tokenizer_config_template_like_transformers(tmp_path):
    d = model_dir(tmp_path, CHATML_QWEN2)
    (d / "additional_chat_templates").mkdir()
    (d / "additional_chat_templates" / "tool_use.jinja").write_text(TOOLS, encoding="utf-8")
    assert transformers_template_names(d) == ["tool_use"]
    assert mpool.inspect(d)["files"]["tokenizer"]["chat_templates"] == ["tool_use"]
    assert ours(d, USER_ASSISTANT, tools=[WEATHER_TOOL]) == reference(d, USER_ASSISTANT, tools=[WEATHER_TOOL])


def test_a_lone_named_template_needs_tools_or_its_name_like_transformers(tmp_path):
    d = model_dir(tmp_path, CHATML_QWEN2)
    (d / "additional_chat_templates").mkdir()
    (d / "additional_chat_templates" / "tool_use.jinja").write_text(TOOLS, encoding="utf-8")
    with pytest.raises(ValueError, match="no default"):  # transformers' own refusal
        reference(d, USER_ASSISTANT)
    with pytest.raises(InvalidInput, match=r"\['tool_use'\] include no 'default'"):
        ours(d, USER_ASSISTANT)
    assert ours(d, USER_ASSISTANT, template_name="tool_use") == reference(d, USER_ASSISTANT, chat_template="tool_use")


def test_chat_template_jinja_without_tokenizer_config_is_reported_and_used(tmp_path):
    d = model_dir(tmp_path, PHI3, jinja_file=True)
    (d / "tokenizer_config.json").unlink()
    assert mpool.inspect(d)["files"]["tokenizer"]["chat_templates"] == ["default"]
    assert ours(d, CONVERSATION).startswith("<|system|>\nYou are terse.<|end|>")


def test_legacy_chat_template_json_is_the_last_resort(tmp_path):
    d = model_dir(tmp_path, None)
    (d / "chat_template.json").write_text(json.dumps({"chat_template": CHATML_QWEN2}), encoding="utf-8")
    assert mpool.inspect(d)["files"]["tokenizer"]["chat_templates"] == ["default"]
    assert ours(d, USER_ASSISTANT) == ChatTemplate({"default": CHATML_QWEN2}).render(USER_ASSISTANT)


# --- errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "messages",
    [[], "hello", None, [{"content": "no role"}], [{"role": 3, "content": "x"}], ["not a mapping"]],
    ids=["empty", "string", "none", "no_role", "non_str_role", "non_mapping"],
)
def test_malformed_messages_raise_invalid_input(messages):
    tpl = ChatTemplate({"default": CHATML_QWEN2})
    with pytest.raises(InvalidInput, match="messages"):
        tpl.render(messages)


def test_raise_exception_in_the_template_becomes_invalid_input_with_its_message(tmp_path):
    d = model_dir(tmp_path, MISTRAL)
    tpl = ChatTemplate.from_model_dir(d)
    assert tpl is not None
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(InvalidInput, match="Conversation roles must alternate user/assistant"):
        tpl.render(bad)
    with pytest.raises(InvalidInput, match="Only user and assistant roles are supported"):
        tpl.render([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])


def test_syntax_error_in_tokenizer_config_template_names_the_file(tmp_path):
    d = model_dir(tmp_path, "{% for m in messages %}{{ m.content }}")
    with pytest.raises(InvalidInput, match="tokenizer_config.json"):
        ChatTemplate.from_model_dir(d)


def test_syntax_error_in_chat_template_jinja_names_the_file(tmp_path):
    d = model_dir(tmp_path, "{{ messages[0].content ", jinja_file=True)
    with pytest.raises(InvalidInput, match="chat_template.jinja"):
        ChatTemplate.from_model_dir(d)


def test_syntax_error_in_an_additional_template_names_its_file(tmp_path):
    d = model_dir(tmp_path, CHATML_QWEN2)
    (d / "additional_chat_templates").mkdir()
    (d / "additional_chat_templates" / "rag.jinja").write_text("{% if %}", encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"additional_chat_templates/rag\.jinja, line 1"):
        ChatTemplate.from_model_dir(d)


def test_a_template_file_that_is_not_utf8_raises_invalid_input_naming_it(tmp_path):
    d = model_dir(tmp_path, CHATML_QWEN2)
    (d / "chat_template.jinja").write_bytes(b"{{ bos_token }}\xff")
    with pytest.raises(InvalidInput, match=r"chat_template\.jinja is not valid UTF-8"):
        ChatTemplate.from_model_dir(d)


def test_sandbox_refuses_mutating_messages_and_reaching_python_internals():
    mutate = ChatTemplate({"default": "{% set _ = messages.append(1) %}{{ messages | length }}"})
    with pytest.raises(InvalidInput, match="SecurityError"):
        mutate.render([{"role": "user", "content": "x"}])
    escape = ChatTemplate({"default": "{{ ''.__class__.__mro__[1].__subclasses__() }}"})
    with pytest.raises(InvalidInput):
        escape.render([{"role": "user", "content": "x"}])


def test_unknown_template_name_and_non_mapping_tools_raise_invalid_input():
    tpl = ChatTemplate({"default": CHATML_QWEN2})
    with pytest.raises(InvalidInput, match="no chat template named 'tool_use'"):
        tpl.render(USER_ASSISTANT, template_name="tool_use")
    with pytest.raises(InvalidInput, match="tools"):
        tpl.render(USER_ASSISTANT, tools=["get_weather"])  # type: ignore[list-item]


def test_sentence_transformers_layout_reads_the_template_beside_its_transformer_module(tmp_path: Path) -> None:
    # The tokenizer sits in the Transformer module's folder: chat and inspect both read it there.
    root = tmp_path / "st"
    module = root / "0_Transformer"
    module.mkdir(parents=True)
    save_tokenizer(module, chat_template=None)
    (module / "chat_template.jinja").write_text(str(CHAT_TEMPLATE), encoding="utf-8")
    (module / "config.json").write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
    ]), encoding="utf-8")
    template = ChatTemplate.from_model_dir(root)
    assert template is not None
    assert mpool.inspect(root)["files"]["tokenizer"]["chat_templates"] == sorted(template.templates)
    assert template.render(USER_ASSISTANT) == reference(module, USER_ASSISTANT)
