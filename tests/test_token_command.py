"""``chat-server token``: a development token, from the real command, that the
server's verifier takes; and the refusals, one line and exit code 2."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.processes import clean_env
from server.common.config import Config
from server.core.identity import Role
from server.web.tokens import open_verifier

from .signing import SECRET


def chat_server(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(**env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


async def test_a_token_from_the_command_is_taken_by_the_verifier(tmp_path: Path) -> None:
    rooms = ["--room", "team-*:member", "--room", "team-board:reader", "--room", "ops:moderator"]
    before = time.time()
    done = chat_server(
        "token", "--sub", "alice@example.com", "--name", " Alice ", "--ttl", "2h", *rooms,
        cwd=tmp_path, CHAT_AUTH_JWT_SECRET=SECRET,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert done.stdout == token + "\n" and token.count(".") == 2
    async with open_verifier(Config(auth_jwt_secret=SECRET)) as verifier:
        assert verifier is not None
        identity = await verifier.verify(token)
    assert (identity.user_id, identity.name) == ("alice@example.com", "Alice")
    assert before + 7200 - 5 <= identity.expires_at <= time.time() + 7200 + 5
    assert identity.role_in("team-a") is Role.MEMBER
    assert identity.role_in("team-board") is Role.READER
    assert identity.role_in("ops") is Role.MODERATOR
    assert identity.role_in("general") is None


async def test_the_secret_audience_and_issuer_come_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "chat.toml"
    path.write_text(
        f'auth_jwt_secret = "{SECRET}"\nauth_jwt_audience = "chat"\n'
        'auth_jwt_issuer = "https://app.example.com"\n'
    )
    done = chat_server("token", "--sub", "bob", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    config = Config(
        auth_jwt_secret=SECRET, auth_jwt_audience="chat", auth_jwt_issuer="https://app.example.com"
    )
    async with open_verifier(config) as verifier:
        assert verifier is not None
        identity = await verifier.verify(done.stdout.strip())
    assert (identity.user_id, identity.name, identity.grants) == ("bob", None, ())
    assert identity.expires_at == pytest.approx(time.time() + 3600, abs=10)  # 1h by default


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--sub", "alice"], {}, "auth_jwt_secret is not set"),
        (["--sub", "alice"], {"CHAT_AUTH_JWKS_URL": "https://id.example.com/jwks"}, "not set"),
        (["--sub", "alice"], {"CHAT_AUTH_JWT_SECRET": "short"}, "auth_jwt_secret: must be"),
        (["--sub", "u-1234"], {"CHAT_AUTH_JWT_SECRET": SECRET}, "--sub must not start"),
        (["--sub", "a b"], {"CHAT_AUTH_JWT_SECRET": SECRET}, "--sub must be"),
        (["--sub", "a", "--name", "x\u202e"], {"CHAT_AUTH_JWT_SECRET": SECRET}, "--name"),
        (["--sub", "a", "--room", "team-*"], {"CHAT_AUTH_JWT_SECRET": SECRET}, "--room"),
        (["--sub", "a", "--room", "x:admin"], {"CHAT_AUTH_JWT_SECRET": SECRET}, "--room"),
        (["--sub", "a", "--ttl", "forever"], {"CHAT_AUTH_JWT_SECRET": SECRET}, "--ttl"),
        (["--sub", "a", "--ttl", "0"], {"CHAT_AUTH_JWT_SECRET": SECRET}, "--ttl"),
        ([], {"CHAT_AUTH_JWT_SECRET": SECRET}, "--sub"),
    ],
)
def test_a_token_that_cannot_be_made_exits_2_with_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], needle: str
) -> None:
    done = chat_server("token", *args, cwd=tmp_path, **env)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chat-server token: error: "), done.stderr
    assert needle in lines[0], done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CHAT_ANONYMOUS": "none"}, "anonymous"),
        ({"CHAT_PRIVATE_ROOM_PREFIXES": "team-"}, "private_room_prefixes"),
        ({"CHAT_AUTH_JWT_SECRET": "too short"}, "auth_jwt_secret"),
    ],
)
def test_the_server_refuses_sign_in_settings_that_cannot_work_in_one_line(
    tmp_path: Path, env: dict[str, str], needle: str
) -> None:
    done = chat_server("--workers", "1", cwd=tmp_path, **env)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"chat-server: error: {needle}: "), done.stderr
