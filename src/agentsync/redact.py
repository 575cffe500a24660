"""Masking credentials in shared content before it is stored (SPEC.md §5). No I/O.

What is caught, each counted under its kind:

- ``openai_key`` ``sk-…`` / ``sk-proj-…`` (and other ``sk-`` provider keys such as DeepSeek's);
  ``anthropic_key`` ``sk-ant-…``; ``stripe_key`` ``sk_live_/rk_live_/sk_test_/rk_test_``;
  ``github_token`` ``ghp_/gho_/ghu_/ghs_/ghr_`` and ``github_pat_``; ``gitlab_token``
  ``glpat-``; ``slack_token`` ``xox[abposr]-``; ``slack_webhook`` ``hooks.slack.com/services/…``;
  ``aws_access_key`` ``AKIA/ASIA`` + 16; ``aws_secret_key`` the value of
  ``aws_secret_access_key = …``; ``google_api_key`` ``AIza`` + 35; ``jwt`` ``eyJ….eyJ….…``;
  ``private_key`` a PEM ``-----BEGIN … PRIVATE KEY-----`` block, to its END line or, when
  the END line is missing (truncated output), to the end of the string.
- ``authorization`` the value of an ``Authorization:``/``"Authorization": "…"`` header with
  a ``Bearer``/``Basic``/``Token``/``Bot`` scheme, and of a dict field named Authorization.
- ``url_password`` the password of ``scheme://user:password@host``.
- ``secret_value`` the value of a secret-named setting: ``NAME=value`` (.env, shell, URL
  query), ``NAME = "value"`` (a quoted literal in code or TOML), ``NAME: value`` at the start
  of a line (YAML), ``"NAME": "value"`` (JSON-ish text), and a string field of a dict whose
  key is such a NAME (tool-call arguments, metadata).

Mask format: the recognisable prefix is kept and the rest becomes ``[REDACTED:<kind>]``, so
``sk-ant-[REDACTED:anthropic_key]``, ``AKIA[REDACTED:aws_access_key]``, ``[REDACTED:jwt]``,
``DB_PASSWORD=[REDACTED:secret_value]``, ``postgres://app:[REDACTED:url_password]@db``. No
pattern matches a mask (``[`` is outside every token alphabet, and values containing
``[REDACTED`` are skipped), so redacting twice gives the same text and counts nothing new.

Secret NAMEs. A NAME is split into word parts (``_ - .`` and camelCase); it is secret when
its *last* part is SECRET, TOKEN, PASSWORD, PASSWD, PASS, PASSPHRASE, CREDENTIAL(S), AUTH,
PRIVATE or APIKEY, or a glued word ending in PASSWORD/PASSWD/SECRET/TOKEN/APIKEY
(``PGPASSWORD``, ``csrftoken``); KEY and PWD count only after a qualifier (``OPENAI_API_KEY``,
``MYSQL_PWD``), because a bare ``key:`` (CI cache keys, k8s) and ``PWD=`` (the working
directory in ``env`` output) are not secrets, and KEY after SORT/CACHE/PRIMARY/PUBLIC/…
is not either; TOKEN after PAGE/NEXT/CANCELLATION/… is a cursor. Only the last part counts:
``TOKEN_LIMIT``, ``AUTH_URL``, ``PASSWORD_MIN_LENGTH``, ``PRIVATE_KEY_PATH`` describe a
secret without holding it; ``KEYBOARD_LAYOUT``, ``MONKEY`` never match.

Values that are left alone: empty; references (``$VAR``, ``${VAR}``, ``%VAR%``,
``{{ var }}``); placeholders (``<your-key-here>``, ``xxx``, ``***``, ``sk-...``,
``changeme``, ``your_token``, ``true``, numbers, ...); already-masked values. Code is not a
value: ``api_key = os.environ["API_KEY"]`` and ``token = get_token()`` (unquoted with spaces
is an expression, only a quoted literal counts), ``token=os.getenv("T")``,
``api_key=settings.api_key`` (calls, subscripts, dotted paths, trailing ``,``/``;``); in the
``NAME: value`` and JSON forms also a bare word of up to 15 letters (``password: str``,
``token: string;``, ``"auth": "required"``), since type hints and enums look exactly like that.

Not caught, by design or by limit:

- a secret split across events: ``message.delta`` events are redacted one at a time, so a
  key streamed in two deltas (``sk-pro`` + ``j-…``) passes; the ``message`` event that
  usually follows with the whole content is caught, but the stored deltas are not;
- secrets without a recognisable shape or name: a bare password in prose, a YAML value
  with spaces, a short all-letter password in YAML/JSON (``password: hunter``), headers
  other than Authorization (``X-Api-Key: …`` is caught only at the start of a line);
- tokens whose random part lacks the variety of a real key (fewer than 8 distinct
  characters, or no digit for ``sk-`` and Slack tokens): real keys fail this with negligible
  probability, while identifiers like ``sk-learn-model-selection`` and ``sk_learn_…`` pass;
- strings nested deeper than ``MAX_DEPTH`` are not inspected but replaced wholesale by
  ``[REDACTED:too_deep]`` (fail closed rather than overflow the stack).

Cost (CPython 3.11 on this machine, ``timeit``, whole ``redact_data`` call): a
``message.delta`` with 30 characters of prose ~1.1 µs; with 190 characters of prose that
contains colons and the word "keys" ~5 µs; a 740-character ``message`` ~8 µs; a 4 KB
``tool_result`` of Python source ~95 µs; a delta holding a key ~5 µs. Every rule is gated by
plain substring tests (``"sk-" in text``; the secret words found with ``str.find`` on the
lower-cased text), which run at memory speed; the regexes, ~10 ns per character in
CPython's engine, run only on a gate's hit, and the NAME rules only on the lines holding
``<secret word>…[=:]``.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from typing import Any, Final

MASK_PREFIX: Final = "[REDACTED"
MAX_DEPTH: Final = 64

# Fields whose values are structure, not content: ids keep the log consistent.
_STRUCTURAL_KEYS: Final = frozenset({"id", "messageId", "toolCallId", "role", "type", "status"})
_STRUCTURAL_SUFFIXES: Final = ("Id", "ID", "_id")


def _mask(kind: str) -> str:
    return f"{MASK_PREFIX}:{kind}]"


# --- tokens with a recognisable shape ---------------------------------------------------

# One pattern per prefix, each starting with its literal prefix (the boundary check is a
# lookbehind placed after it) so that the regex engine can skip to candidates quickly.
# Each runs only when its prefix occurs in the text (see _redact_tokens). The group name is
# the kind.
_PRIVATE_KEY_RE: Final = re.compile(
    r"(?P<private_key>-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----)"
    r"(?!\s*\[REDACTED)[\s\S]*?(?:(?P<pem_end>-----END[A-Z0-9 ]*PRIVATE KEY-----)|\Z)"
)
_SK_RE: Final = re.compile(
    r"sk-(?<![\w-]sk-)(?:(?P<anthropic_key>ant-[A-Za-z0-9_-]{20,})"
    r"|(?P<openai_key>(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}|[A-Za-z0-9]{20,}))(?![\w-])"
)
_STRIPE_RE: Final = re.compile(
    r"(?<![\w-])(?P<stripe_key>[sr]k_(?:live|test)_[A-Za-z0-9]{16,})(?![\w-])"
)
_GITHUB_RE: Final = re.compile(
    r"g(?<![\w-]g)(?P<github_token>h[pousr]_[A-Za-z0-9]{30,}|ithub_pat_[A-Za-z0-9_]{30,})(?![\w-])"
)
_GITLAB_RE: Final = re.compile(
    r"glpat-(?<![\w-]glpat-)(?P<gitlab_token>[A-Za-z0-9_-]{20,})(?![\w-])"
)
_SLACK_RE: Final = re.compile(
    r"xox(?<![\w-]xox)(?P<slack_token>[abposr]-[A-Za-z0-9-]{10,})(?![\w-])"
)
_SLACK_HOOK_RE: Final = re.compile(
    r"hooks\.slack\.com/services/(?P<slack_webhook>[A-Za-z0-9_/-]{16,})"
)
_GOOGLE_RE: Final = re.compile(r"AIza(?<![\w-]AIza)(?P<google_api_key>[A-Za-z0-9_-]{35})(?![\w-])")
_JWT_RE: Final = re.compile(
    r"eyJ(?<![\w-]eyJ)(?P<jwt>[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})(?![\w-])"
)
_AWS_ID_RE: Final = re.compile(
    r"A(?<![A-Za-z0-9]A)(?P<aws_access_key>(?:KIA|SIA)[A-Z0-9]{16})(?![A-Za-z0-9])"
)
_KEPT_PREFIX: Final = re.compile(
    r"sk-ant-|sk-(?:proj|svcacct|admin)-|sk-|[sr]k_(?:live|test)_|gh[pousr]_|github_pat_"
    r"|glpat-|xox[abposr]-|AIza|AKIA|ASIA|hooks\.slack\.com/services/"
)
_NEEDS_DIGIT: Final = frozenset({"openai_key", "anthropic_key", "slack_token"})


def _random_enough(kind: str, body: str) -> bool:
    """Whether ``body`` (a token without its prefix) has the variety of a generated key."""
    if len(set(body)) < 8:
        return False
    if kind in _NEEDS_DIGIT:
        return any(c.isdigit() for c in body)
    return any(c.isdigit() or c.isupper() for c in body)


# --- values named by a secret-looking setting ------------------------------------------

_SECRET_WORD = r"(?i:key|secret|token|passw(?:or)?d|pwd|pass|passphrase|credentials?|auth|private)"
_NAME = rf"(?P<name>(?:[A-Za-z_][A-Za-z0-9_.-]*?)?{_SECRET_WORD})"

# A quoted value stops at its closing quote; an unquoted one at white space.
_ENV_RE: Final = re.compile(
    rf"""(?:^|(?<=[\s?&;"'(,]))(?:export[ \t]+)?{_NAME}
    (?: =(?P<bare>[^\s'"`=>][^\s'"`]*)
      | [ \t]*=[ \t]*(?P<q>["'])(?P<quoted>[^"'\n]*)(?P=q) )""",
    re.MULTILINE | re.VERBOSE,
)
_YAML_RE: Final = re.compile(
    rf"""^[ \t]*(?:-[ \t]+)?{_NAME}[ \t]*:[ \t]+
    (?: (?P<q>["'])(?P<quoted>[^"'\n]*)(?P=q) | (?P<bare>[^\s'"\#\[{{|>&*!][^\s]*) )
    [ \t]*(?:\#.*)?$""",
    re.MULTILINE | re.VERBOSE,
)
_JSON_RE: Final = re.compile(
    rf"""(?P<q0>["']){_NAME}(?P=q0)[ \t]*:[ \t]*(?P<q>["'])(?P<quoted>(?:[^"'\\\n]|\\.)*)(?P=q)""",
    re.VERBOSE,
)
_AUTH_RE: Final = re.compile(
    r"""(?P<keep>\b(?:proxy-)?authorization["']?[ \t]*[:=][ \t]*["']?
        (?:bearer|basic|token|bot)[ \t]+)
    (?P<value>[A-Za-z0-9._~+/=-]{8,})(?![A-Za-z0-9._~+/=\[-])""",
    re.IGNORECASE | re.VERBOSE,
)
_AWS_SECRET_RE: Final = re.compile(
    r"""(?P<keep>(?i:aws_?secret_?access_?key)["']?[ \t]*[:=][ \t]*["']?)
    (?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])""",
    re.VERBOSE,
)
_URL_RE: Final = re.compile(
    r"(?P<keep>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]+:)(?P<value>[^\s/@'\"]+)(?=@)"
)
# After a secret word: the rest of a name, maybe a closing quote, then = or :.
_AFTER_WORD: Final = re.compile(r"[a-z0-9_.-]*[\"']?[ \t]*[=:]")
# Lower-cases ASCII only, for the rare text that str.lower() makes longer ("\u0130" becomes
# two characters), since positions in the lowered text must be positions in the original.
_ASCII_LOWER: Final = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}

_WORD_PART: Final = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_LAST_WORDS: Final = frozenset(
    {"secret", "token", "password", "passwd", "pass", "passphrase", "credential"}
    | {"credentials", "auth", "private", "apikey"}
)
_GLUED_SUFFIXES: Final = ("password", "passwd", "secret", "token", "apikey")
_KEY_NOT_SECRET: Final = frozenset(
    {"sort", "cache", "primary", "partition", "foreign", "hot", "shortcut", "row", "hash"}
    | {"range", "public", "pub", "object", "map", "dict", "lookup", "id", "unique", "group"}
    | {"composite", "idempotency", "translation", "storage", "config", "route", "dedup"}
    | {"dedupe", "index", "query", "search", "sign", "react", "i", "j", "k", "s3", "ssh"}
)
_TOKEN_NOT_SECRET: Final = frozenset(
    {"page", "next", "prev", "continuation", "cancellation", "cancel", "sync", "cursor"}
    | {"resume", "max", "stop", "eos", "bos", "pad", "unk", "special"}
)


@functools.lru_cache(maxsize=4096)  # dict keys repeat: "content", "delta", "output", ...
def is_secret_name(name: str) -> bool:
    """Whether a setting called ``name`` holds a secret (see the module docstring)."""
    parts = [p.lower() for p in _WORD_PART.findall(name)]
    if not parts:
        return False
    last = parts[-1]
    prev = parts[-2] if len(parts) > 1 else None
    if last == "key":
        return prev is not None and prev not in _KEY_NOT_SECRET
    if last == "pwd":
        return prev is not None
    if last == "token" and prev in _TOKEN_NOT_SECRET:
        return False
    if last in _LAST_WORDS:
        return True
    return any(last.endswith(s) and last != s for s in _GLUED_SUFFIXES)


_PLACEHOLDER_RE: Final = re.compile(
    r"""(?ix)
    [-+]?\d+(?:\.\d+)?                          # numbers: ports, limits, flags
    | (.)\1*                                    # xxxx, ****, ----, 0000
    | (?:your|my|insert|enter|put|some)[-_ .].* | .*[-_ ]here
    | change[-_ ]?me | placeholder | redacted | example | dummy | fake | test | testing
    | secret | password | passwd | token | none | null | nil | undefined | undef
    | true | false | yes | no | on | off | enabled | disabled | required | optional
    """
)


def _is_placeholder(value: str) -> bool:
    return (
        not value
        or value.startswith(("$", "%", "<", "{{", "@"))
        or MASK_PREFIX in value
        or "..." in value
        or "\u2026" in value
        or "xxxx" in value.lower()
        or _PLACEHOLDER_RE.fullmatch(value) is not None
    )


_CODE_LIKE: Final = re.compile(r"[()\[\]{},;]|^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$")
_WORD_LIKE: Final = re.compile(r"[A-Za-z_]{1,15}|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


def _is_bare_secret(name: str, value: str) -> bool:
    """An unquoted ``NAME=value``: a value, not an expression or a reference."""
    return (
        not _is_placeholder(value)
        and _CODE_LIKE.search(value) is None
        and value.lower() != name.lower()
    )


def _is_field_secret(value: str) -> bool:
    """A ``NAME: value`` or JSON/dict field value: also not a type name or an enum word."""
    return not _is_placeholder(value) and _WORD_LIKE.fullmatch(value) is None


# --- the redactor ---------------------------------------------------------------------


class Redactor:
    """Masks credentials in event data. Stateless apart from ``enabled``; thread-safe."""

    __slots__ = ("enabled",)

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def redact_data(
        self, event_type: str, data: dict[str, Any]
    ) -> tuple[dict[str, Any], Counter[str]]:
        """Return ``data`` with every credential in its string values masked, and the
        number of masks applied by kind.

        ``data`` is never mutated: the result is ``data`` itself when nothing was masked
        (so ``result is data`` is a cheap test) and otherwise a copy sharing the unchanged
        parts. Keys and the values of id fields (``id``, ``messageId``, ``*Id``, ``role``,
        ``type``, ``status``) are left as they are. ``event_type`` is accepted so that
        per-type rules can be added without changing callers; every type is treated alike.
        """
        # Counter() runs Counter.__init__ and update() in Python, ~0.4 µs; an empty
        # Counter made by __new__ is the same object for a fifth of the cost.
        counts: Counter[str] = Counter.__new__(Counter)
        if not self.enabled:
            return data, counts
        result = _walk_dict(data, counts, 0)
        return result, counts

    def redact_text(self, text: str) -> tuple[str, Counter[str]]:
        """Mask credentials in one string."""
        counts: Counter[str] = Counter()
        if not self.enabled:
            return text, counts
        return redact_text(text, counts), counts


def redact_text(text: str, counts: Counter[str]) -> str:
    """Return ``text`` with credentials masked, adding to ``counts``; ``text`` itself when
    nothing matched."""
    original = text
    text = _redact_tokens(text, counts)
    if "=" in text or ":" in text:
        text = _redact_named(text, counts)
    if "://" in text and "@" in text:
        text = _URL_RE.sub(lambda m: _replace_keep(m, "url_password", counts), text)
    # A skipped match still makes sub() build a new string; hand back the original.
    return original if text == original else text


def _redact_tokens(text: str, counts: Counter[str]) -> str:
    # Substring tests cost tens of nanoseconds; a regex scan costs ~10 ns per character.
    def replace(m: re.Match[str]) -> str:
        return _replace_token(m, counts)

    if "PRIVATE KEY" in text:
        text = _PRIVATE_KEY_RE.sub(replace, text)
    if "sk-" in text:
        text = _SK_RE.sub(replace, text)
    if "k_live_" in text or "k_test_" in text:
        text = _STRIPE_RE.sub(replace, text)
    if "gh" in text and (
        "ghp_" in text
        or "gho_" in text
        or "ghu_" in text
        or "ghs_" in text
        or "ghr_" in text
        or "github_pat_" in text
    ):
        text = _GITHUB_RE.sub(replace, text)
    if "glpat-" in text:
        text = _GITLAB_RE.sub(replace, text)
    if "xox" in text:
        text = _SLACK_RE.sub(replace, text)
    if "hooks.slack.com" in text:
        text = _SLACK_HOOK_RE.sub(replace, text)
    if "AIza" in text:
        text = _GOOGLE_RE.sub(replace, text)
    if "eyJ" in text:
        text = _JWT_RE.sub(replace, text)
    if "AKIA" in text or "ASIA" in text:
        text = _AWS_ID_RE.sub(replace, text)
    return text


_SECRET_WORDS: Final = ("key", "token", "pass", "secret", "auth", "pwd", "credential", "private")


def _redact_named(text: str, counts: Counter[str]) -> str:
    """The line-level rules, run only on the lines where a secret word ends a name that is
    followed by ``=`` or ``:``; str.find() locates the words at memchr speed, where any
    regex scan would cost ~10 ns per character."""
    low = text.lower()
    if len(low) != len(text):
        low = text.translate(_ASCII_LOWER)
    spans: set[tuple[int, int]] = set()
    for word in _SECRET_WORDS:
        i = low.find(word)
        while i >= 0:
            end = i + len(word)
            if _AFTER_WORD.match(low, end) is not None:
                start = text.rfind("\n", 0, i) + 1
                stop = text.find("\n", end)
                spans.add((start, len(text) if stop < 0 else stop))
            i = low.find(word, end)
    if not spans:
        return text
    pieces: list[str] = []
    done = 0
    for start, end in sorted(spans):
        if start < done:  # the same line, found through another word
            continue
        pieces.append(text[done:start])
        pieces.append(_redact_line(text[start:end], counts))
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def _redact_line(line: str, counts: Counter[str]) -> str:
    def named(m: re.Match[str]) -> str:
        return _replace_named(m, counts)

    line = _AUTH_RE.sub(lambda m: _replace_keep(m, "authorization", counts), line)
    line = _AWS_SECRET_RE.sub(lambda m: _replace_keep(m, "aws_secret_key", counts), line)
    line = _ENV_RE.sub(named, line)
    line = _YAML_RE.sub(named, line)
    return _JSON_RE.sub(named, line)


def _replace_token(m: re.Match[str], counts: Counter[str]) -> str:
    begin = m.groupdict().get("private_key")
    if begin is not None:
        counts["private_key"] += 1
        end = m.group("pem_end")
        return f"{begin}\n{_mask('private_key')}" + (f"\n{end}" if end else "")
    kind = m.lastgroup
    assert kind is not None
    if kind == "jwt":
        counts[kind] += 1
        return _mask(kind)
    text = m.group()
    prefix = _KEPT_PREFIX.match(text)
    keep = prefix.group() if prefix is not None else ""
    if not _random_enough(kind, text[len(keep) :]):
        return text
    counts[kind] += 1
    return keep + _mask(kind)


def _replace_keep(m: re.Match[str], kind: str, counts: Counter[str]) -> str:
    value = m.group("value")
    if _is_placeholder(value):
        return m.group()
    counts[kind] += 1
    return m.group("keep") + _mask(kind)


def _replace_named(m: re.Match[str], counts: Counter[str]) -> str:
    name = m.group("name")
    if not is_secret_name(name):
        return m.group()
    groups = m.groupdict()
    bare = groups.get("bare")
    if bare is not None:
        ok = _is_bare_secret(name, bare) and (m.re is _ENV_RE or _is_field_secret(bare))
        group = "bare"
    else:
        quoted = m.group("quoted")
        ok = not _is_placeholder(quoted) if m.re is _ENV_RE else _is_field_secret(quoted)
        group = "quoted"
    if not ok:
        return m.group()
    counts["secret_value"] += 1
    start, end = m.span(group)
    whole = m.group()
    offset = m.start()
    return whole[: start - offset] + _mask("secret_value") + whole[end - offset :]


_AUTH_VALUE_RE: Final = re.compile(r"(?i)((?:bearer|basic|token|bot)[ \t]+)?(.+)", re.DOTALL)


def _redact_field(key: str, value: str, counts: Counter[str]) -> str:
    """A string under a dict key: its text, then the key's own meaning."""
    new = redact_text(value, counts)
    if new is not value:
        return new
    if key.lower() in ("authorization", "proxy-authorization"):
        m = _AUTH_VALUE_RE.fullmatch(value)
        if m is not None and not _is_placeholder(m.group(2)):
            counts["authorization"] += 1
            return (m.group(1) or "") + _mask("authorization")
    elif is_secret_name(key) and _is_field_secret(value):
        counts["secret_value"] += 1
        return _mask("secret_value")
    return value


def _walk_dict(data: dict[str, Any], counts: Counter[str], depth: int) -> dict[str, Any]:
    result: dict[str, Any] | None = None
    for key, value in data.items():
        if isinstance(key, str) and (key in _STRUCTURAL_KEYS or key.endswith(_STRUCTURAL_SUFFIXES)):
            continue
        if isinstance(value, str):
            new: Any = (
                _redact_field(key, value, counts)
                if isinstance(key, str)
                else redact_text(value, counts)
            )
        else:
            new = _walk(value, counts, depth + 1)
        if new is not value:
            if result is None:
                result = dict(data)
            result[key] = new
    return data if result is None else result


def _walk(value: Any, counts: Counter[str], depth: int) -> Any:
    if isinstance(value, str):
        return redact_text(value, counts)
    if not isinstance(value, (dict, list)):
        return value
    if depth >= MAX_DEPTH:
        counts["too_deep"] += 1
        return _mask("too_deep")
    if isinstance(value, dict):
        return _walk_dict(value, counts, depth)
    result: list[Any] | None = None
    for i, item in enumerate(value):
        new = _walk(item, counts, depth + 1)
        if new is not item:
            if result is None:
                result = list(value)
            result[i] = new
    return value if result is None else result
