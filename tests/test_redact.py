"""Redaction: every kind is caught, ordinary code and prose pass untouched.

The fake credentials are built by concatenation so that secret scanners run over this
repository do not flag the file.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import random
import re
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentsync.redact import MASK_PREFIX, MAX_DEPTH, Redactor, is_secret_name

R = Redactor()

ANTHROPIC = "sk-ant-" + "api03-" + "Ab3dEf7hIjKlMn0pQrStUvWxYz_0123456789-abcdEFGHijkl"
OPENAI_PROJ = "sk-" + "proj-" + "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1HgFeDcBa_-abcDEF1234567890"
OPENAI_LEGACY = "sk-" + "T3Blbk" + "FJa1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8s9T0"
DEEPSEEK = "sk-" + "3f9a1c0b7d2e4f6a8b1c3d5e7f9a0b2c"
GITHUB = "gh" + "p_" + "aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5"
GITHUB_OAUTH = "gh" + "o_" + "Q1w2E3r4T5y6U7i8O9p0A1s2D3f4G5h6J7k8"
GITHUB_PAT = (
    "github"
    + "_pat_"
    + "11ABCDEFG0"
    + "abcdefghijKLMNOP_qrstuvWXYZ0123456789abcdefghijklmnopQRSTUV"
)
GITLAB = "gl" + "pat-" + "aB3dE5fG7hI9jK1lM3nO"
SLACK = "xo" + "xb-" + "1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
SLACK_HOOK = (
    "https://hooks.slack.com" + "/services/" + "T0A1B2C3D/B4E5F6G7H/aBcDeFgHiJkLmNoPqRsTuVwX"
)
AWS_ID = "AK" + "IA" + "Z7Q2M4N6P8R1T3V5"
AWS_STS = "AS" + "IA" + "Y1X2W3V4U5T6S7R8"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYzQ3rT5uV7w"
GOOGLE = "AI" + "za" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"
STRIPE = "sk" + "_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
STRIPE_RK = "rk" + "_live_" + "51Hx2AbCdEfGhIjKlMnOpQr"
JWT = (
    "eyJ" + "hbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJ" + "zdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM_BODY = "MIIEowIBAAKCAQEA7v2+q1Z3x\nc9Yb0aQk8s1f2Lr3+Zt8u/1XwYt\nQ9b0c1d2e3f4g5h6i7j8k9==\n"
PEM = "-----BEGIN " + "RSA PRIVATE KEY-----\n" + PEM_BODY + "-----END RSA PRIVATE KEY-----"
PEM_OPENSSH = (
    "-----BEGIN " + "OPENSSH PRIVATE KEY-----\n" + PEM_BODY + "-----END OPENSSH PRIVATE KEY-----"
)

TOKENS: list[tuple[str, str, str]] = [
    # (value, kind, the prefix that stays readable)
    (ANTHROPIC, "anthropic_key", "sk-ant-"),
    (OPENAI_PROJ, "openai_key", "sk-proj-"),
    (OPENAI_LEGACY, "openai_key", "sk-"),
    (DEEPSEEK, "openai_key", "sk-"),
    (GITHUB, "github_token", "ghp_"),
    (GITHUB_OAUTH, "github_token", "gho_"),
    (GITHUB_PAT, "github_token", "github_pat_"),
    (GITLAB, "gitlab_token", "glpat-"),
    (SLACK, "slack_token", "xoxb-"),
    (SLACK_HOOK, "slack_webhook", "https://hooks.slack.com/services/"),
    (AWS_ID, "aws_access_key", "AKIA"),
    (AWS_STS, "aws_access_key", "ASIA"),
    (GOOGLE, "google_api_key", "AIza"),
    (STRIPE, "stripe_key", "sk_live_"),
    (STRIPE_RK, "stripe_key", "rk_live_"),
    (JWT, "jwt", ""),
]


def redact(text: str) -> tuple[str, dict[str, int]]:
    out, counts = R.redact_data("message", {"id": "m1", "role": "assistant", "content": text})
    return out["content"], dict(counts)


# --- true positives ------------------------------------------------------------------


@pytest.mark.parametrize(("value", "kind", "prefix"), TOKENS, ids=[t[1] for t in TOKENS])
@pytest.mark.parametrize(
    "template",
    ["{}", "my key is {} ok", "export X={}", '{{"k": "{}"}}', "`{}`", "({})", "line\n{}\nnext"],
)
def test_token_masked_in_context(value: str, kind: str, prefix: str, template: str) -> None:
    out, counts = redact(template.format(value))
    assert value not in out
    assert counts == {kind: 1}
    assert out == template.format(prefix + f"[REDACTED:{kind}]")


def test_private_key_block_masked_whole() -> None:
    for pem in (PEM, PEM_OPENSSH):
        out, counts = redact("here:\n" + pem + "\nthanks")
        assert counts == {"private_key": 1}
        assert "MIIE" not in out and "Q9b0" not in out
        assert out.startswith("here:\n-----BEGIN ") and out.endswith("PRIVATE KEY-----\nthanks")


def test_truncated_private_key_masked_to_end() -> None:
    out, counts = redact("cat id_rsa\n" + PEM.split("-----END")[0])
    assert counts == {"private_key": 1}
    assert "MIIE" not in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "OPENAI_BASE=1\nDB_PASSWORD=hunter2\n",
            "OPENAI_BASE=1\nDB_PASSWORD=[REDACTED:secret_value]\n",
        ),
        ("export GITHUB_TOKEN=abc123def456", "export GITHUB_TOKEN=[REDACTED:secret_value]"),
        ("SECRET_KEY='django-insecure-9x'", "SECRET_KEY='[REDACTED:secret_value]'"),
        ('STRIPE_API_KEY="q1w2e3r4t5"', 'STRIPE_API_KEY="[REDACTED:secret_value]"'),
        ("PGPASSWORD=postgres psql -h db", "PGPASSWORD=[REDACTED:secret_value] psql -h db"),
        ("MYSQL_PWD=Tr0ub4dor", "MYSQL_PWD=[REDACTED:secret_value]"),
        ("CLIENT_SECRET=Zq81!x", "CLIENT_SECRET=[REDACTED:secret_value]"),
        ("api_key = 'a1b2c3d4e5'", "api_key = '[REDACTED:secret_value]'"),
        ('const apiKey = "a1b2c3d4e5";', 'const apiKey = "[REDACTED:secret_value]";'),
        ('password = "hunter2"  # TOML', 'password = "[REDACTED:secret_value]"  # TOML'),
        ("db:\n  password: hunter2\n", "db:\n  password: [REDACTED:secret_value]\n"),
        ("  auth_token: 'Zx81qq0'\n", "  auth_token: '[REDACTED:secret_value]'\n"),
        ("X-Api-Key: 0f9e8d7c6b", "X-Api-Key: [REDACTED:secret_value]"),
        ('{"password": "hunter2x"}', '{"password": "[REDACTED:secret_value]"}'),
        ('{"client_secret": "a-b-c-1"}', '{"client_secret": "[REDACTED:secret_value]"}'),
        ("GET /v1?access_token=a1b2c3&x=1", "GET /v1?access_token=[REDACTED:secret_value]"),
        ('env: ["NPM_TOKEN=n1p2m3"]', 'env: ["NPM_TOKEN=[REDACTED:secret_value]"]'),
    ],
)
def test_secret_assignment(text: str, expected: str) -> None:
    out, counts = redact(text)
    assert out == expected
    assert counts == {"secret_value": 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "curl -H 'Authorization: Bearer abcdef123456' https://x",
            "curl -H 'Authorization: Bearer [REDACTED:authorization]' https://x",
        ),
        (
            '{"Authorization": "Basic dXNlcjpwYXNz"}',
            '{"Authorization": "Basic [REDACTED:authorization]"}',
        ),
        ("authorization: token q1w2e3r4t5y6", "authorization: token [REDACTED:authorization]"),
        (
            "Proxy-Authorization: Bearer a.b.c-d_e",
            "Proxy-Authorization: Bearer [REDACTED:authorization]",
        ),
    ],
)
def test_authorization_header(text: str, expected: str) -> None:
    out, counts = redact(text)
    assert out == expected
    assert counts == {"authorization": 1}


def test_non_ascii_text_keeps_positions() -> None:
    # "\u0130".lower() is two characters long: positions must still line up.
    out, _ = redact("\u0130\u0130 caf\u00e9\nDB_PASSWORD=hunter2\n\u4e2d\u6587 " + GITHUB)
    assert out == (
        "\u0130\u0130 caf\u00e9\nDB_PASSWORD=[REDACTED:secret_value]\n\u4e2d\u6587 "
        "ghp_[REDACTED:github_token]"
    )


def test_bearer_holding_a_known_token_is_counted_once() -> None:
    out, counts = redact("Authorization: Bearer " + GITHUB_PAT)
    assert out == "Authorization: Bearer github_pat_[REDACTED:github_token]"
    assert counts == {"github_token": 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgres://app:s3cr3t@db:5432/x", "postgres://app:[REDACTED:url_password]@db:5432/x"),
        ("redis://:pa55@cache:6379", "redis://:pa55@cache:6379"),  # no user: not our shape
        ("https://u:p%40ss@example.com/", "https://u:[REDACTED:url_password]@example.com/"),
        (
            "mongodb+srv://root:Zz9@c0.mongodb.net",
            "mongodb+srv://root:[REDACTED:url_password]@c0.mongodb.net",
        ),
    ],
)
def test_url_password(text: str, expected: str) -> None:
    assert redact(text)[0] == expected


def test_aws_credentials_file() -> None:
    text = f"[default]\naws_access_key_id = {AWS_ID}\naws_secret_access_key = {AWS_SECRET}\n"
    out, counts = redact(text)
    assert AWS_ID not in out and AWS_SECRET not in out
    assert "aws_secret_access_key = [REDACTED:aws_secret_key]" in out
    assert counts == {"aws_access_key": 1, "aws_secret_key": 1}


def test_many_kinds_in_one_string() -> None:
    text = "\n".join(v for v, _, _ in TOKENS) + "\n" + PEM + "\nDB_PASSWORD=hunter2\n"
    out, counts = redact(text)
    for value, _, _ in TOKENS:
        assert value not in out
    assert sum(counts.values()) == len(TOKENS) + 2


@pytest.mark.parametrize(
    "name",
    ["OPENAI_API_KEY", "DB_PASSWORD", "GITHUB_TOKEN", "apiKey", "clientSecret", "PGPASSWORD",
     "csrftoken", "_authToken", "X-Api-Key", "SECRET_KEY", "AWS_SECRET_ACCESS_KEY", "TOKEN",
     "password", "MYSQL_PWD", "BASIC_AUTH", "GPG_PASSPHRASE", "db.password", "SMTP_PASS",
     "GOOGLE_APPLICATION_CREDENTIALS", "apikey", "ANTHROPIC_KEY"],
)  # fmt: skip
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    ["KEYBOARD_LAYOUT", "MONKEY", "key", "KEY", "PWD", "OLDPWD", "SORT_KEY", "cache_key",
     "primaryKey", "PUBLIC_KEY", "TOKEN_LIMIT", "max_tokens", "AUTH_URL", "PASSWORD_MIN_LENGTH",
     "PRIVATE_KEY_PATH", "next_page_token", "pageToken", "cancellationToken", "author",
     "passport", "compass", "bypass_cache", "tokenizer", "keyword"],
)  # fmt: skip
def test_not_secret_names(name: str) -> None:
    assert not is_secret_name(name)


# --- false positives -----------------------------------------------------------------

_rng = random.Random(1234)
_BLOB = _rng.randbytes(6000)
PNG_DATA_URI = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + _BLOB).decode()

UNTOUCHED = [
    # hashes and ids
    "commit " + hashlib.sha1(b"x").hexdigest() + " fixes it",
    "sha256:" + hashlib.sha256(b"x").hexdigest(),
    "git log 3f9a1c0b7d2e4f6a8b1c3d5e7f9a0b2c4d6e8f0a..HEAD",
    str(uuid.UUID(int=_rng.getrandbits(128))) + " " + str(uuid.UUID(int=_rng.getrandbits(128))),
    "![shot](" + PNG_DATA_URI + ")",
    base64.b64encode(_BLOB).decode(),
    base64.urlsafe_b64encode(_BLOB).decode(),
    "\n".join(base64.encodebytes(_BLOB).decode().splitlines()),
    # long identifiers and prose
    "from sklearn.model_selection import train_test_split  # sk_learn_model_selection",
    "sk-learn-model-selection-cross-validation and task-1234, disk-usage-monitor-daemon",
    "skip-navigation skip-link-focus-visible sk-button sk-spinner-circle-bounce",
    '<div class="sk-fading-circle sk-circle1 sk-circle-active-12345 btn-primary">',
    "The AKIA prefix marks long-term AWS keys; ASIA marks temporary ones.",
    "AKIAXXXXXXXXXXXXXXXX is the placeholder we use in docs",
    "She said eyJust kidding, and the header eyJhbGciOi alone is not a JWT",
    "ghp_ tokens start with ghp_, github_pat_ with github_pat_, glpat- for GitLab",
    "sk-... or sk-proj-... goes in OPENAI_API_KEY",
    "Use `xoxb-` bot tokens and `xoxp-` user tokens.",
    "The key insight: passwords must be hashed. Token: a unit of text. Auth: later.",
    "Keyboard shortcut: Ctrl+K. Password policy: 12 chars. Private: yes",
    # code: env lookups, type hints, calls, references
    'import os\napi_key = os.environ["API_KEY"]\ntoken = get_token()\n',
    'api_key=os.environ["API_KEY"]\ntoken=os.getenv("TOKEN")\nsecret=settings.secret\n',
    "def login(user: str, password: str, token: str | None = None) -> bool:\n    ...\n",
    "@dataclass\nclass Creds:\n    password: str\n    token: Optional[str] = None\n"
    "    api_key: SecretStr\n",
    "interface Auth {\n  token: string;\n  password?: string;\n  apiKey: string,\n}\n",
    "const token = process.env.GITHUB_TOKEN;\nconst apiKey = process.env.API_KEY ?? '';\n",
    "let password = read_password()?;\nstruct Config { pub api_key: String, token: Token }\n",
    "if token==expected: pass\nfor key in d: print(key)\nx = {key: value for key, value in d}",
    "headers = {'Authorization': f'Bearer {token}'}\nauth = ('user', password)\n",
    'curl -H "Authorization: Bearer $TOKEN" -H "Authorization: Bearer ${GITHUB_TOKEN}"',
    "Authorization: Bearer <token>\nAuthorization: Bearer your_token_here",
    "f(api_key=api_key, token=token)\nclient = OpenAI(api_key=key)\n",
    "- uses: actions/cache@v4\n  with:\n    key: ${{ runner.os }}-pip-${{ hashFiles('x') }}\n",
    "spec:\n  key: app\n  auth: required\n  token: string\n",
    '{"type": "object", "properties": {"password": {"type": "string"}}, "private": true}',
    '{"auth": "oauth", "token_count": "123", "max_tokens": 4096, "apiKey": ""}',
    # .env lines that hold no value
    "API_KEY=\nAPI_KEY=${OPENAI_API_KEY}\nAPI_KEY=$OPENAI_API_KEY\nSECRET=<your-key-here>\n",
    "TOKEN=xxx\nPASSWORD=****\nAPI_KEY=your-api-key-here\nDB_PASSWORD=changeme\nAUTH=true\n",
    "TOKEN_LIMIT=4096\nAUTH_URL=https://auth.example.com/login\nPRIVATE_KEY_PATH=~/.ssh/id_rsa\n",
    "PWD=/home/me/src\nOLDPWD=/home/me\nKEY=value\nSORT_KEY=created_at\n",
    "OPENAI_API_KEY=sk-...\nANTHROPIC_API_KEY=sk-ant-xxxxxxxx\nAPI_KEY=%API_KEY%\n",
    # markdown and URLs without passwords
    "# Setup\n\n1. Get a **token** from [the settings](https://github.com/settings/tokens).\n"
    "2. Run `gh auth login`.\n\n| key | value |\n|---|---|\n| a | b |\n",
    "https://user@example.com/path?q=1 ssh://git@github.com:22/a/b git@github.com:a/b.git",
    "http://localhost:8080/api https://example.com:443/a@b postgres://db:5432/app",
    "postgres://user:${DB_PASSWORD}@db/app mysql://root:<password>@localhost/x",
    "https://api.example.com/v1/items?page_token=abc123&limit=10",
]


@pytest.mark.parametrize("text", UNTOUCHED, ids=[f"fp{i}" for i in range(len(UNTOUCHED))])
def test_false_positives_pass_untouched(text: str) -> None:
    data = {"id": "m1", "role": "assistant", "content": text}
    out, counts = R.redact_data("message", data)
    assert out is data, out["content"]
    assert not counts


# --- structure -----------------------------------------------------------------------


def test_nested_structures_and_ids() -> None:
    key_id = "sk-" + "proj-" + "IdNotToTouch1234567890ABCdef"  # an id that looks like a key
    data: dict[str, Any] = {
        "id": key_id,
        "role": "assistant",
        "content": "set OPENAI_API_KEY=" + OPENAI_LEGACY,
        "toolCalls": [
            {
                "id": key_id,
                "messageId": key_id,
                "name": "bash",
                "arguments": {"command": "export GH=" + GITHUB, "timeout": 30, "flag": None},
                "status": "done",
            },
            {"id": "c2", "name": "http", "arguments": '{"token": "' + SLACK + '"}'},
        ],
        "toolResults": [
            {"toolCallId": key_id, "output": "ok " + JWT, "error": None, "exit": 0, "ok": True},
            {"toolCallId": "c2", "output": ["line", {"deep": [GOOGLE, 1.5]}], "error": PEM},
        ],
        "metadata": {"sessionID": key_id, "env": {"DB_PASSWORD": "hunter2"}, "n": 3},
    }
    original = copy.deepcopy(data)
    out, counts = R.redact_data("message", data)
    assert data == original  # the input is not mutated
    assert out is not data
    assert counts == {
        "openai_key": 1,
        "github_token": 1,
        "slack_token": 1,
        "jwt": 1,
        "google_api_key": 1,
        "private_key": 1,
        "secret_value": 1,
    }
    assert out["id"] == key_id
    assert out["toolCalls"][0]["id"] == key_id and out["toolCalls"][0]["messageId"] == key_id
    assert out["toolResults"][0]["toolCallId"] == key_id
    assert out["metadata"]["sessionID"] == key_id
    assert out["metadata"]["env"] == {"DB_PASSWORD": "[REDACTED:secret_value]"}
    assert out["metadata"]["n"] == 3
    assert out["toolCalls"][0]["arguments"]["timeout"] == 30
    assert out["toolCalls"][0]["arguments"]["flag"] is None
    assert out["toolResults"][0]["exit"] == 0 and out["toolResults"][0]["ok"] is True
    assert out["toolResults"][1]["output"][1]["deep"] == ["AIza[REDACTED:google_api_key]", 1.5]
    # unchanged branches are shared, not copied
    assert out["toolResults"][1]["output"][0] is data["toolResults"][1]["output"][0]
    assert R.redact_data("message", out) == (out, {})


def test_dict_fields_named_like_secrets() -> None:
    args = {
        "password": "hunter2",
        "api_key": "q1w2e3r4",
        "headers": {"Authorization": "Bearer q1w2e3r4t5", "Accept": "*/*"},
        "token": "",
        "auth": "basic",
        "token_count": "12",
        "key": "k-1",
    }
    data = {"messageId": "m", "id": "t", "name": "http", "arguments": args}
    out, counts = R.redact_data("tool_call", data)
    assert out["arguments"] == {
        "password": "[REDACTED:secret_value]",
        "api_key": "[REDACTED:secret_value]",
        "headers": {"Authorization": "Bearer [REDACTED:authorization]", "Accept": "*/*"},
        "token": "",
        "auth": "basic",
        "token_count": "12",
        "key": "k-1",
    }
    assert counts == {"secret_value": 2, "authorization": 1}


@pytest.mark.parametrize(
    ("event_type", "data", "path"),
    [
        ("message.delta", {"id": "m", "delta": "key " + ANTHROPIC}, ("delta",)),
        ("tool_result", {"messageId": "m", "toolCallId": "t", "output": GITLAB}, ("output",)),
        ("tool_result", {"messageId": "m", "toolCallId": "t", "error": GITLAB}, ("error",)),
        ("session.update", {"title": "debug " + STRIPE}, ("title",)),
        ("session.update", {"metadata": {"cwd": "/x", "note": AWS_ID}}, ("metadata", "note")),
        ("status", {"status": "idle", "detail": JWT}, ("detail",)),
    ],
)
def test_every_event_type(event_type: str, data: dict[str, Any], path: tuple[str, ...]) -> None:
    out, counts = R.redact_data(event_type, data)
    assert sum(counts.values()) == 1
    value: Any = out
    for p in path:
        value = value[p]
    assert MASK_PREFIX in value


def test_non_string_leaves_untouched() -> None:
    data: dict[str, Any] = {"id": "m", "n": 1, "f": 2.5, "b": False, "z": None, "l": [1, [2, {}]]}
    out, counts = R.redact_data("message", data)
    assert out is data and not counts


def test_too_deep_fails_closed() -> None:
    deep: Any = GITHUB
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    out, counts = R.redact_data("message", {"id": "m", "metadata": {"x": deep}})
    assert GITHUB not in repr(out)
    assert counts == {"too_deep": 1}


def test_disabled_redactor_passes_everything() -> None:
    off = Redactor(enabled=False)
    data = {"id": "m", "content": "\n".join(v for v, _, _ in TOKENS) + PEM}
    out, counts = off.redact_data("message", data)
    assert out is data and not counts
    assert off.redact_text(GITHUB) == (GITHUB, {})


def test_split_across_deltas_is_not_caught() -> None:
    """Documented limit: each delta is redacted alone."""
    halves = [OPENAI_PROJ[:10], OPENAI_PROJ[10:]]
    outs = [R.redact_data("message.delta", {"id": "m", "delta": h})[0]["delta"] for h in halves]
    assert "".join(outs) == OPENAI_PROJ


# --- properties ----------------------------------------------------------------------

_TRIGGERS = re.compile(
    r"(?i)sk-|[sr]k_|gh[pousr]_|github_pat|glpat|xox|slack|akia|asia|aiza|eyj|private"
    r"|key|secret|token|pass|pwd|credential|auth|://"
)
_alphabet = st.sampled_from(
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    + list(" \n\t=:-_./+@\"'`$#{}[](),;<>?&%*!~é中")
)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_alphabet, max_size=300).filter(lambda s: not _TRIGGERS.search(s)))
def test_text_without_prefixes_is_unchanged(text: str) -> None:
    data = {"id": "m", "delta": text}
    out, counts = R.redact_data("message.delta", data)
    assert out is data and not counts


_secrets = st.sampled_from(
    [v for v, _, _ in TOKENS]
    + [PEM, "DB_PASSWORD=hunter2", "Authorization: Bearer q1w2e3r4t5", "pg://u:p4ss@h",
       '"api_key": "abc123x"', "password: s3cret", "aws_secret_access_key=" + AWS_SECRET]
)  # fmt: skip
_fragment = st.one_of(_secrets, st.text(alphabet=_alphabet, max_size=30))


@settings(max_examples=300, deadline=None)
@given(st.lists(_fragment, max_size=8), st.sampled_from([" ", "\n", "", "="]))
def test_redaction_is_idempotent(fragments: list[str], sep: str) -> None:
    text = sep.join(fragments)
    once, _ = R.redact_text(text)
    twice, counts = R.redact_text(once)
    assert twice == once
    assert not counts


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([v for v, _, _ in TOKENS]), min_size=1, max_size=5), st.data())
def test_known_tokens_never_survive(values: list[str], data: st.DataObject) -> None:
    seps = data.draw(
        st.lists(
            st.sampled_from([" ", "\n", ", ", "'", '"', "(", "`"]),
            min_size=len(values) + 1,
            max_size=len(values) + 1,
        )
    )
    text = seps[0] + "".join(v + s for v, s in zip(values, seps[1:], strict=True))
    out, counts = R.redact_text(text)
    for v in values:
        assert v not in out
    assert sum(counts.values()) == len(values)
