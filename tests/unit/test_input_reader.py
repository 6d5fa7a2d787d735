"""Hostile inputs and outputs: no hang, no unbounded read, no traceback, no input replaced.

Every JSON input goes through `formats.jsonio.read_json` and every output through the
pre-flight of `outputs.py`, so these cases hold for each command that reads a profile, a plan,
a job file or checkpoint JSON. The representative ones run the real CLI in a subprocess (a FIFO
must be refused before `open`, which would block forever); the rest run `main()` in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_tf.cli._app import main
from megatron_tf.errors import FormatError
from megatron_tf.formats.job import JobEnvelope
from megatron_tf.formats.jsonio import BYTES_PER_ACTION, MAX_DEPTH, max_json_bytes, read_json
from megatron_tf.formats.plan import load_plan
from megatron_tf.formats.schedule import MAX_ACTIONS_ENV

REPO = Path(__file__).resolve().parents[2]
SCHEDULE = ["--schedule", "1f1b", "--pp", "2", "--microbatches", "4"]


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`timelyfreeze ARGS` in this process; returns (exit code, stdout + stderr)."""
    saved = sys.argv
    sys.argv = ["timelyfreeze", *args]
    try:
        with pytest.raises(SystemExit) as stop:
            main()
    finally:
        sys.argv = saved
    out, err = capsys.readouterr()
    code = stop.value.code
    return (code if isinstance(code, int) else 0), out + err


def refused(capsys: pytest.CaptureFixture[str], needle: str, *args: str) -> str:
    """Assert exit 2 with one `error:` line holding `needle`; return that line."""
    code, text = _main(capsys, *args)
    lines = [x for x in text.splitlines() if x.strip()]
    assert code == 2, text
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert needle in lines[0], lines[0]
    return lines[0]


def _profile(tmp: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp / "p.json"
    code, text = _main(
        capsys, "profile", "--synthetic", *SCHEDULE, "--costs", "1,1,1", "-o", str(path)
    )
    assert code == 0, text
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`timelyfreeze ARGS` in a subprocess (10 s at most); returns (exit code, stderr)."""
    full = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    done = subprocess.run(
        [sys.executable, "-m", "megatron_tf", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=full,
        timeout=10,
    )
    return done.returncode, done.stderr


def _one_line(code: int, err: str, needle: str) -> None:
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.json"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (("solve", "{}"), "profile"),
        (("simulate", "--profile", "{}"), "profile"),
        (("pretrain", "--dry-run", "--plan", "{}"), "plan"),
    ],
    ids=["solve", "simulate", "pretrain"],
)
def test_fifo_input_is_refused_without_blocking(
    fifo: Path, tmp_path: Path, args: tuple[str, ...], what: str
) -> None:
    extra = ("--out-dir", str(tmp_path / "run")) if args[0] == "pretrain" else ()
    code, err = _run(*(a.format(fifo) for a in args), *extra)
    _one_line(code, err, f"{what} {fifo} is a FIFO (named pipe), expected a regular file")


def test_character_device_is_refused(capsys) -> None:
    refused(
        capsys,
        "profile /dev/zero is a character device, expected a regular file (given to PROFILE)",
        "solve",
        "/dev/zero",
    )
    with pytest.raises(FormatError, match="plan /dev/zero is a character device"):
        load_plan("/dev/zero")


def test_oversized_file_is_refused_before_reading(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(MAX_ACTIONS_ENV, "1000")
    limit = max_json_bytes()
    assert limit == (1 << 20) + BYTES_PER_ACTION * 1000
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:  # sparse: nothing is written, a read would still be huge
        fh.truncate(limit + 1)
    refused(
        capsys,
        f"has {limit + 1:,} bytes, over the limit of {limit:,} for a JSON input "
        f"({BYTES_PER_ACTION} per schedule action at {MAX_ACTIONS_ENV}=1,000)",
        "solve",
        str(big),
    )


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deep_nesting_is_one_line(tmp_path: Path, capsys, opener: str) -> None:
    deep = tmp_path / "deep.json"
    closer = "]" if opener == "[" else "}"
    deep.write_text(opener * 5000 + "1" + closer * 5000)
    refused(
        capsys, f"nested more than {MAX_DEPTH} levels deep (given to PROFILE)", "solve", str(deep)
    )
    shallow = tmp_path / "shallow.json"
    shallow.write_text(opener * MAX_DEPTH + "1" + closer * MAX_DEPTH)
    assert read_json(shallow, "profile") is not None


def test_duplicate_key_is_refused_naming_it(tmp_path: Path, capsys) -> None:
    good = json.loads(_profile(tmp_path, capsys).read_text())
    text = json.dumps(good, indent=2)
    # The first stage gives "forward" twice; last-wins would silently take 50.0.
    dup = text.replace('"forward": 1.0,', '"forward": 1.0, "forward": 50.0,', 1)
    assert dup != text
    bad = tmp_path / "dup.json"
    bad.write_text(dup)
    line = refused(capsys, "has the key 'forward' twice in one object", "solve", str(bad))
    assert "'rank', 'chunk'" in line


def test_job_file_goes_through_the_same_reader(tmp_path: Path) -> None:
    job = tmp_path / "job.json"
    job.write_text('{"format": "x", "format": "y"}')
    with pytest.raises(FormatError, match="job file .* has the key 'format' twice"):
        JobEnvelope.load(job, "pretrain")


def test_solve_onto_its_profile_is_refused_and_leaves_it(tmp_path: Path, capsys) -> None:
    profile = _profile(tmp_path, capsys)
    before = _sha(profile)
    code, err = _run("solve", str(profile), "-o", str(profile))
    _one_line(code, err, "-o/--output")
    assert "is the file given to PROFILE" in err
    link = tmp_path / "link.json"
    link.symlink_to(profile)
    code, err = _run("solve", str(link), "-o", str(profile))
    _one_line(code, err, "is the file given to PROFILE")
    assert _sha(profile) == before


def test_simulate_trace_onto_its_profile_is_refused(tmp_path: Path, capsys) -> None:
    profile = _profile(tmp_path, capsys)
    before = _sha(profile)
    refused(
        capsys,
        "--trace",
        "simulate",
        "--profile",
        str(profile),
        "--trace",
        str(profile),
    )
    assert _sha(profile) == before


def test_over_long_output_names_are_one_line(tmp_path: Path, capsys) -> None:
    profile = _profile(tmp_path, capsys)
    long_name = str(tmp_path / ("a" * 300 + ".json"))
    refused(
        capsys, "bytes long, over the file system's limit", "solve", str(profile), "-o", long_name
    )
    long_path = str(tmp_path) + "/abcdefghi" * 500 + ".json"
    refused(capsys, "(PATH_MAX)", "solve", str(profile), "-o", long_path)
    refused(
        capsys,
        "(NAME_MAX)",
        "profile",
        "--synthetic",
        *SCHEDULE,
        "--costs",
        "1,1,1",
        "-o",
        long_name,
    )


def test_cache_env_naming_a_file_is_one_line(tmp_path: Path) -> None:
    plain = tmp_path / "cache"
    plain.write_text("not a folder")
    code, err = _run(
        "pretrain",
        "--dry-run",
        "--out-dir",
        str(tmp_path / "run"),
        env={"TIMELYFREEZE_CACHE": str(plain)},
    )
    _one_line(code, err, f"TIMELYFREEZE_CACHE '{plain}': '{plain}' is a file, expected a folder")
    assert plain.read_text() == "not a folder"


def test_fifo_latest_marker_does_not_block(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    (root / "iter_0000001").mkdir(parents=True)
    (root / "iter_0000001" / "meta.json").write_text("{}")
    os.mkfifo(root / "latest")
    code = (
        "import sys; from megatron_tf.train.checkpoint import latest_checkpoint; "
        "print(latest_checkpoint(sys.argv[1]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(root)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=10,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
