"""What the labeling pages show: a prompt as chat turns, and text as sanitised Markdown.

Model output, prompts and guidelines are untrusted. Markdown goes through markdown-it-py with raw HTML off (every
`<` in the source comes out as `&lt;`), images off (a model could otherwise make the labeler's browser fetch a
tracking URL; the CSP would block it too) and a link check that allows only http(s), mailto and relative links
(no javascript:, vbscript:, data:, file:). Only the output of `markdown()` is marked safe for Jinja; everything
else on the pages stays autoescaped, and the CSP forbids inline scripts whatever happens here.

A prompt is shown as turns (role + content) when the task knows them:
- the task's source holds `prompt_messages` (imports of conversational data keep the messages there), or
- the prompt text is a chat-template rendering: ChatML (`<|im_start|>role ... <|im_end|>`), Llama 3
  (`<|start_header_id|>role<|end_header_id|> ... <|eot_id|>`), Gemma (`<start_of_turn>role ... <end_of_turn>`), or
  an Anthropic HH transcript (`\\n\\nHuman: ... \\n\\nAssistant: ...`).
Anything else is one turn with the role "prompt". Text outside the recognised turn markers is never dropped: it is
shown as a turn of its own, so the labeler sees everything the model saw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markupsafe import Markup

ALLOWED_SCHEMES = ("http", "https", "mailto")


def _link_ok(url: str) -> bool:
    """markdown-it calls this with the normalised URL (entities decoded, percent-encoded): a scheme must be one of
    ALLOWED_SCHEMES; a link without one (a relative path, #anchor) is fine."""
    # Browsers drop ASCII whitespace and control characters inside a scheme ("java\tscript:"): strip them first.
    cleaned = re.sub(r"[\x00-\x20\x7f]+", "", url)
    try:
        scheme = urlsplit(cleaned).scheme.lower()
    except ValueError:
        return False
    if scheme:
        return scheme in ALLOWED_SCHEMES
    return ":" not in cleaned.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]  # "foo:bar" with an odd scheme


def _make_md() -> MarkdownIt:
    # breaks: a single newline is a line break, so plain-text model output keeps its lines.
    md = MarkdownIt("commonmark", {"html": False, "breaks": True})
    md.disable("image")
    md.validateLink = _link_ok  # type: ignore[method-assign]  # markdown-it-py's documented hook

    def link_open(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        # Links open in a new tab (the task page and its draft stay) and leak nothing to the target.
        tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
        tokens[idx].attrSet("target", "_blank")
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


_MD = _make_md()


def markdown(text: str) -> Markup:
    """Untrusted text -> HTML safe to put in a page (see the module docstring)."""
    return Markup(_MD.render(text or ""))


@dataclass(frozen=True)
class Turn:
    role: str
    content: str


_CHATML = re.compile(r"<\|im_start\|>([^\n<]*)\n(.*?)(?:<\|im_end\|>\n?|(?=<\|im_start\|>)|\Z)", re.S)
_LLAMA3 = re.compile(
    r"<\|start_header_id\|>([^<]*)<\|end_header_id\|>\n?\n?(.*?)(?:<\|eot_id\|>|(?=<\|start_header_id\|>)|\Z)", re.S
)
_GEMMA = re.compile(r"<start_of_turn>([^\n<]*)\n(.*?)(?:<end_of_turn>\n?|(?=<start_of_turn>)|\Z)", re.S)
_HH = re.compile(r"\n\n(Human|Assistant):[ ]?(.*?)(?=\n\n(?:Human|Assistant):|\Z)", re.S)
_DROP = re.compile(r"^(?:<\|begin_of_text\|>|<bos>|<s>|\s)+|(?:\s)+$")  # BOS marks and blank space around text


def _split(text: str, pattern: re.Pattern[str], role_map: dict[str, str] | None = None) -> list[Turn] | None:
    turns: list[Turn] = []
    pos = 0
    for m in pattern.finditer(text):
        gap = _DROP.sub("", text[pos : m.start()])
        if gap:  # text outside any turn marker: shown, never dropped
            turns.append(Turn("text", gap))
        role = m.group(1).strip()
        turns.append(Turn((role_map or {}).get(role, role) or "unknown", m.group(2).strip("\n")))
        pos = m.end()
    if not turns:
        return None
    tail = _DROP.sub("", text[pos:])
    if tail:
        turns.append(Turn("text", tail))
    if len(turns) > 1 and turns[-1].content.strip() == "" and turns[-1].role != "text":
        turns.pop()  # the empty generation prompt at the end ("<|im_start|>assistant\n")
    return turns


def prompt_turns(prompt: str, source: Any = None) -> list[Turn]:
    """The prompt as turns (see the module docstring)."""
    messages = source.get("prompt_messages") if isinstance(source, dict) else None
    if isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        return [Turn(m["role"], m["content"]) for m in messages]
    if "<|im_start|>" in prompt:
        turns = _split(prompt, _CHATML)
    elif "<|start_header_id|>" in prompt:
        turns = _split(prompt, _LLAMA3)
    elif "<start_of_turn>" in prompt:
        turns = _split(prompt, _GEMMA, {"model": "assistant"})
    elif prompt.startswith("\n\nHuman:"):
        turns = _split(prompt, _HH, {"Human": "user", "Assistant": "assistant"})
    else:
        turns = None
    return turns or [Turn("prompt", prompt)]
