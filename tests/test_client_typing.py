"""``mypy --strict`` on a user's script catches a misuse of each client (and passes a correct one).

The two clients are typed for their users: a wrong argument type, a forgotten ``await``, awaiting
a sync result, ``with`` on the async client are errors a type checker reports before anything
runs. Each misuse below is marked ``# E``; mypy must report exactly those lines, and nothing in
the correct script. One mypy run over both files, its cache in a temporary folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MISUSE = """\
from pathlib import Path

import numpy as np

from veil.sdk import AsyncClient, AttestationPolicy, Client

policy = AttestationPolicy.simulated_for_tests(Path("D/simulated-root.pem"))


def sync_misuse() -> None:
    with Client("127.0.0.1:7443", api_key=Path("k"), policy=policy) as client:
        client.infer(42, {"x": np.zeros((1, 4), np.float32)})  # E: model is a str
        client.train("digest", "mlp", target_epsilon="3")  # E: epsilon is a float
        models: str = client.list_models()  # E: a list of ModelInfo
        client.upload_model("m.onnx")  # E: name is required


async def async_misuse() -> None:
    async with AsyncClient("127.0.0.1:7443", api_key=Path("k"), policy=policy) as client:
        first = client.list_models()[0]  # E: a coroutine, not awaited
        print(first)
        await client.infer("scorer", inputs=3)  # E: inputs is a mapping
    with AsyncClient("127.0.0.1:7443", api_key=Path("k"), policy=policy) as c:  # E: async with
        print(c)


async def awaiting_a_sync_result() -> None:
    with Client("127.0.0.1:7443", api_key=Path("k"), policy=policy) as client:
        await client.list_models()  # E: a list is not awaitable
"""

CORRECT = """\
from pathlib import Path

import numpy as np

from veil.sdk import AsyncClient, AttestationPolicy, Client, ModelInfo

policy = AttestationPolicy.simulated_for_tests(Path("D/simulated-root.pem"))


def sync_use() -> list[ModelInfo]:
    with Client("127.0.0.1:7443", api_key=Path("k"), policy=policy) as client:
        out = client.infer("scorer", {"x": np.zeros((1, 4), np.float32)})
        print(out["probs"].shape)
        return client.list_models()


async def async_use() -> list[ModelInfo]:
    async with AsyncClient("127.0.0.1:7443", api_key=Path("k"), policy=policy) as client:
        out = await client.infer("scorer", {"x": np.zeros((1, 4), np.float32)})
        print(out["probs"].shape)
        return await client.list_models()
"""


def test_mypy_strict_catches_each_misuse_of_both_clients(tmp_path: Path) -> None:
    (tmp_path / "misuse.py").write_text(MISUSE)
    (tmp_path / "correct.py").write_text(CORRECT)
    env = dict(os.environ, MYPYPATH=f"{REPO / 'sdk' / 'src'}:{REPO / 'protos' / 'src'}")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            os.devnull,  # the user's settings, not the repository's
            "--cache-dir",
            str(tmp_path / "cache"),
            "--follow-imports=silent",
            "--no-error-summary",
            "misuse.py",
            "correct.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = re.findall(r"^(misuse|correct)\.py:(\d+): error: ", out.stdout, re.M)
    reported = {(name, int(line)) for name, line in errors}
    expected = {
        ("misuse", number)
        for number, text in enumerate(MISUSE.splitlines(), start=1)
        if "# E:" in text
    }
    assert expected, "the misuse script marks its misuses"
    assert reported == expected, out.stdout
    assert 'Maybe you forgot to use "await"?' in out.stdout
