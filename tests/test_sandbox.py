"""The code sandbox: results, limits and containment, each layer checked where it can be.

Tests that switch the audit hook off (``audit_hook=False``) check that the kernel-level layers
hold on their own, i.e. that code which gets past the hook is still contained.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.errors import TunelabError
from tunelab.evaluate.sandbox import SandboxResult, _pids_of_uid, run_many, run_program

ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parents[1]


def our_children() -> set[int]:
    """Pids whose parent is this test process."""
    kids = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                kids.add(int(name))
    return kids


def assert_no_leftovers(result: SandboxResult, baseline: set[int]) -> None:
    """No child of ours survived the run, nor (as root) any process of its sandbox uid."""
    assert our_children() <= baseline
    if ROOT and "uid" in result.layers:
        uid = int(result.stdout.split()[0])  # the programs below print their uid first
        assert uid != 0 and _pids_of_uid(uid) == []


@pytest.fixture(scope="module")
def layers() -> tuple[str, ...]:
    """The layers this machine supports (a probe run); fails loudly if the sandbox can't start."""
    result = run_program("print('ok')")
    assert result.status == "passed", result.stderr
    return result.layers


def test_correct_program_passes(layers: tuple[str, ...]) -> None:
    result = run_program("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('fine')\n")
    assert result.status == "passed" and result.passed
    assert result.returncode == 0 and result.stdout == "fine\n" and result.stderr == ""
    assert {"session", "rlimits", "audit"} <= set(layers)
    if ROOT:
        assert "uid" in layers


def test_failing_assert_fails() -> None:
    result = run_program("assert 1 + 1 == 3, 'bad maths'\n")
    assert result.status == "failed" and not result.passed and result.returncode == 1
    assert "AssertionError: bad maths" in result.stderr
    assert "<string>" not in result.stderr  # the prelude's frame is not in the traceback


def test_exit_codes_and_syntax_errors() -> None:
    assert run_program("import sys; sys.exit(3)").returncode == 3
    result = run_program("def f(:\n")
    assert result.status == "failed" and "SyntaxError" in result.stderr


def test_infinite_loop_times_out() -> None:
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", timeout_s=1.5)
    assert result.status == "timeout" and not result.passed
    assert 1.4 < result.wall_s < 5 and time.monotonic() - start < 6


def test_sleep_times_out_on_wall_clock() -> None:
    # No CPU used: only the wall-clock deadline (and the process-group kill) can end it.
    result = run_program("import time\ntime.sleep(60)\n", timeout_s=1)
    assert result.status == "timeout" and result.wall_s < 4


@pytest.mark.parametrize("audit_hook", [True, False])
def test_huge_allocation_hits_the_memory_limit(audit_hook: bool) -> None:
    result = run_program("x = bytearray(10 * 1024 ** 3)\n", memory_mb=512, audit_hook=audit_hook)
    assert result.status == "memory" and "MemoryError" in result.stderr


def test_gradual_allocation_hits_the_memory_limit() -> None:
    src = "chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024 * 1024))\n"
    result = run_program(src, memory_mb=256, timeout_s=10)
    assert result.status == "memory" and result.wall_s < 5


def test_process_limit_is_enforced_harmless_proof() -> None:
    # Before any fork bomb: 5 forks of children that sleep, with room for only 1 child.
    src = (
        "import os, time\n"
        "print(os.getuid(), flush=True)\n"
        "made = refused = 0\n"
        "for _ in range(5):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        refused += 1\n"
        "        continue\n"
        "    if pid == 0:\n"
        "        time.sleep(1)\n"
        "        os._exit(0)\n"
        "    made += 1\n"
        "print(made, refused)\n"
        "while True:\n"
        "    try:\n"
        "        os.wait()\n"
        "    except ChildProcessError:\n"
        "        break\n"
    )
    baseline = our_children()
    result = run_program(src, max_processes=2, audit_hook=False, timeout_s=10)
    assert result.status == "passed", result.stderr
    assert result.stdout.split("\n")[1] == "1 4"
    assert_no_leftovers(result, baseline)


def test_fork_is_blocked_by_the_audit_hook() -> None:
    result = run_program("import os\nos.fork()\nprint('forked')\n")
    assert result.status == "blocked" and "forked" not in result.stdout and "os.fork" in result.stderr


def test_fork_bomb_is_contained_without_the_audit_hook() -> None:
    # Only after the harmless proof above: RLIMIT_NPROC caps it, the group kill ends it.
    src = (
        "import os\n"
        "print(os.getuid(), flush=True)\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    baseline = our_children()
    start = time.monotonic()
    result = run_program(src, max_processes=8, timeout_s=2, audit_hook=False)
    assert result.status == "timeout" and time.monotonic() - start < 10
    assert_no_leftovers(result, baseline)


def test_escaped_descendants_are_killed() -> None:
    # A grandchild in its own session is out of the process group; the per-run uid finds it.
    if not ROOT:
        pytest.skip("needs root: only the per-run uid finds processes that left the group")
    src = (
        "import os, time\n"
        "print(os.getuid(), flush=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
    )
    baseline = our_children()
    result = run_program(src, audit_hook=False, timeout_s=10)
    assert result.status == "passed" and result.wall_s < 5
    assert_no_leftovers(result, baseline)


@pytest.mark.parametrize("target", ["/tmp/tunelab-sandbox-escape-{}.txt", str(REPO / "sandbox-escape-{}.txt")])
def test_writing_outside_the_workdir_is_blocked(target: str, layers: tuple[str, ...]) -> None:
    path = Path(target.format(os.getpid()))
    src = f"open({str(path)!r}, 'w').write('escaped')\n"
    try:
        result = run_program(src)
        assert result.status == "blocked" and "blocked open" in result.stderr
        assert not path.exists()
        # Without the hook the kernel layers still stop it: read-only mounts (mount namespace)
        # or, for the repo, file permissions of the unprivileged uid.
        if "mountns" in layers or (ROOT and "/tmp/" not in target):
            result = run_program(src, audit_hook=False)
            assert result.status == "failed"
            assert "Read-only file system" in result.stderr or "Permission denied" in result.stderr
            assert not path.exists()
    finally:
        path.unlink(missing_ok=True)


def test_symlink_out_of_the_workdir_is_blocked() -> None:
    target = Path(f"/tmp/tunelab-sandbox-link-{os.getpid()}.txt")
    src = f"import os\nos.symlink({str(target)!r}, 'link')\nopen('link', 'w').write('x')\n"
    try:
        result = run_program(src)
        assert result.status == "blocked" and not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_writing_inside_the_workdir_works_and_is_removed() -> None:
    src = (
        "import os, tempfile\n"
        "open('out.txt', 'w').write('hello')\n"
        "os.mkdir('sub')\n"
        "fd, name = tempfile.mkstemp()\n"
        "os.close(fd)\n"
        "print(open('out.txt').read(), os.getcwd(), name.startswith(os.getcwd()))\n"
    )
    result = run_program(src)
    assert result.status == "passed", result.stderr
    text, workdir, in_tmp = result.stdout.split()
    assert text == "hello" and in_tmp == "True"
    assert not Path(workdir).exists()


def test_file_size_is_limited() -> None:
    result = run_program("open('big', 'wb').write(b'x' * (3 * 1024 * 1024))\n", disk_mb=1)
    assert result.status == "failed" and ("File too large" in result.stderr or "No space" in result.stderr)


@pytest.mark.parametrize("address", [("127.0.0.1", 22), ("1.1.1.1", 80)])
def test_network_is_blocked(address: tuple[str, int], layers: tuple[str, ...]) -> None:
    src = f"import socket\ns = socket.create_connection({address!r}, timeout=3)\nprint('connected')\n"
    result = run_program(src, timeout_s=8)
    assert result.status == "blocked" and "connected" not in result.stdout
    if "netns" in layers:  # the empty network namespace alone stops it too
        result = run_program(src, timeout_s=8, audit_hook=False)
        assert result.status == "failed" and "connected" not in result.stdout
        assert "unreachable" in result.stderr or "Errno" in result.stderr


@pytest.mark.parametrize("src", [
    "import subprocess\nsubprocess.run(['true'])\n",
    "import os\nos.system('true')\n",
    "import os\nos.execv('/bin/true', ['true'])\n",
    "import ctypes\n",
    "import os, signal\nos.kill(1, signal.SIGTERM)\n",
])
def test_processes_signals_and_ctypes_are_blocked(src: str) -> None:
    result = run_program(src)
    assert result.status == "blocked", result.stderr


def test_blocking_cannot_be_caught() -> None:
    # The hook ends the process, so catching the error and exiting 0 does not turn into a pass.
    src = "import socket\ntry:\n    socket.socket()\nexcept BaseException:\n    pass\nprint('carried on')\n"
    result = run_program(src)
    assert result.status == "blocked" and "carried on" not in result.stdout


def test_environment_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    src = (
        "import os, sys\n"
        "print(sorted(os.environ))\n"
        "print(os.environ['HOME'] == os.getcwd(), 'tunelab' in sys.modules)\n"
    )
    result = run_program(src)
    assert result.status == "passed", result.stderr
    names = eval(result.stdout.split("\n")[0])  # a list literal printed by the program
    assert "HF_TOKEN" not in names and "HTTPS_PROXY" not in names and "PYTHONPATH" not in names
    assert set(names) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "USER", "LOGNAME"}
    assert result.stdout.split("\n")[1] == "True False"


def test_sandbox_runs_unprivileged() -> None:
    src = "import os\nprint(os.getuid(), os.geteuid(), os.getgroups())\nos.setuid(0)\n"
    result = run_program(src)
    uid, euid, groups = result.stdout.split(" ", 2)
    if ROOT:  # dropped to a fresh uid, no groups, and no way back
        assert int(uid) != 0 and int(euid) != 0 and groups.strip() == "[]"
        assert result.status == "failed" and "PermissionError" in result.stderr
    else:
        assert int(uid) == os.getuid()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=300))  # Cs: lone surrogates
def test_stdout_round_trips_arbitrary_text(text: str) -> None:
    result = run_program(f"import sys\nsys.stdout.write({text!r})\nsys.stderr.write({text[::-1]!r})\n")
    assert result.status == "passed"
    assert result.stdout == text and result.stderr == text[::-1] and not result.truncated


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 200_000), limit=st.integers(0, 100_000))
def test_output_is_truncated_at_the_limit(n: int, limit: int) -> None:
    result = run_program(f"import sys\nsys.stdout.write('x' * {n})\n", max_output_bytes=limit)
    assert result.status == "passed"
    assert result.stdout == "x" * min(n, limit) and result.truncated == (n > limit)


def test_endless_output_does_not_flood_us() -> None:
    result = run_program("while True:\n    print('spam' * 1000)\n", timeout_s=1, max_output_bytes=10_000)
    assert result.status == "timeout" and result.truncated and len(result.stdout) == 10_000


def test_run_many_keeps_order() -> None:
    results = run_many([f"print({i})" for i in range(5)] + ["raise SystemExit(2)"], workers=2)
    assert [r.stdout for r in results[:5]] == [f"{i}\n" for i in range(5)]
    assert results[5].status == "failed"
    assert run_many([]) == []


def test_bad_arguments_raise() -> None:
    with pytest.raises(TunelabError):
        run_program("pass", timeout_s=0)
    with pytest.raises(TunelabError):
        run_program("pass", memory_mb=1)
    with pytest.raises(TunelabError):
        run_many(["pass"], workers=0)
