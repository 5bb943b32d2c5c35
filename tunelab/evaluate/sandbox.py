"""Run untrusted, model-written Python in a separate, contained process.

``run_program(source)`` executes ``source`` with ``sys.executable -I -S`` in a child process and
returns a ``SandboxResult``. Nothing from ``source`` ever runs in our own process. The layers,
outermost first (``SandboxResult.layers`` names the ones that were actually active):

``session``
    The child starts in a new session / process group (``start_new_session``). At the wall-clock
    timeout, and after every run, the whole group gets SIGKILL (``os.killpg``).
``uid``
    As root, the child drops to a fresh, unprivileged uid/gid drawn at random for this run (not in
    ``/etc/passwd``; ``nobody`` if the user namespace maps no such ids; no supplementary groups;
    ``setuid(0)`` is verified to fail afterwards). A per-run uid means concurrent runs cannot
    signal or read each other, ``RLIMIT_NPROC`` counts
    only this run's tasks (the kernel does not enforce it for root, hence the drop), and after
    the run every process still owned by that uid - e.g. one that left the process group with
    ``setsid`` - is found in ``/proc`` and killed (through a pidfd, so a reused pid is never hit).
    Not root: the child keeps our uid; see ``userns`` and ``rlimits``.
``rlimits``
    ``RLIMIT_CPU`` (timeout + 1 s: SIGXCPU, hard +2 s: SIGKILL), ``RLIMIT_AS`` and ``RLIMIT_DATA``
    (``memory_mb``), ``RLIMIT_NPROC`` (``max_processes`` tasks, threads included; not root: added
    to the tasks our uid already has, so it bounds growth only), ``RLIMIT_FSIZE`` (``disk_mb``),
    ``RLIMIT_NOFILE``, ``RLIMIT_CORE`` = 0, ``RLIMIT_MEMLOCK`` = 0, ``RLIMIT_MSGQUEUE`` = 0.
``netns``
    ``unshare(CLONE_NEWNET)``: a network namespace with only a loopback device that is down, so
    no connection to anything, 127.0.0.1 included. Not root: ``CLONE_NEWUSER`` too (``userns``,
    our uid mapped to itself), all capabilities dropped afterwards.
``mountns``
    ``unshare(CLONE_NEWNS)``, mounts made private, every mount outside /proc, /sys and /dev
    bind-remounted read-only (its nosuid/nodev/noexec flags kept), read-only empty tmpfs over
    /dev/shm and /dev/mqueue, and a fresh ``disk_mb`` tmpfs (noexec, nosuid, nodev) over the
    working directory. So writes can land only in the working directory, and it is bounded.
    If the interpreter's import directories sit under a directory the sandbox uid cannot enter
    (pyenv under /root), that directory is covered by a tmpfs holding only read-only bind
    mounts of them - which also hides the rest of it. Without a mount namespace such a setup
    cannot work and every run ends with status ``"error"`` and a message saying why.
``no_new_privs``
    ``PR_SET_NO_NEW_PRIVS``: executing a setuid binary gains nothing.
``audit``
    A ``sys.addaudithook`` hook, installed by the prelude before ``source`` runs and impossible
    to remove, ends the program (exit code ``BLOCKED_EXIT``, status ``"blocked"``) on sockets,
    subprocesses, ``os.system``/``exec*``/``spawn*``/``posix_spawn``/``fork``, signals to other
    processes, ``ctypes``, ``gc.get_objects``/``get_referrers``, writes (``open`` for writing,
    remove, rename, mkdir, chmod, ...) outside the working directory (symlinks resolved) and
    ``*at()`` calls with a ``dir_fd`` (not ``os.open``: its audit event does not carry the
    ``dir_fd``). It ends the process rather than raising, so the program cannot catch it and
    carry on; output still sitting in the program's stdout buffer is lost then.

Also: the environment is replaced (PATH=/usr/bin:/bin, HOME and TMPDIR = the working directory,
no tokens, proxies or ``PYTHON*`` variables); ``-I -S`` ignores ``PYTHON*`` variables, the user
site and site-packages (only the standard library is importable); stdin is /dev/null; stdout and
stderr are read as they come and capped at ``max_output_bytes`` each; the working directory is a
fresh temporary directory, removed afterwards.

What this does *not* guarantee. It is not a VM or a seccomp jail: the child shares our kernel, so
a kernel exploit escapes it. The audit hook is a tripwire, not a boundary (PEP 578 says as much):
code crafted against it can get around it, and then the kernel layers above are what hold. If
namespaces are unavailable (``layers`` lacks ``netns``/``mountns``) the network is open and
world-writable directories (/tmp, /dev/shm) are writable to the sandbox uid, up to
``RLIMIT_FSIZE`` per file. Without root there is no separate uid: the program can read whatever
we can read, and descendants that leave the process group are not hunted down. Reads are never
restricted beyond file permissions. Memory is bounded per process, not per run (a handful of
processes under ``RLIMIT_NPROC`` can each use ``memory_mb``). Linux only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tunelab.errors import TunelabError

# Exit codes the prelude uses to tell the parent why the program ended.
BLOCKED_EXIT = 113
MEMORY_EXIT = 114
SETUP_EXIT = 115

STATUSES = ("passed", "failed", "timeout", "memory", "killed", "blocked", "error")

# Per-run uids are drawn from here: far above distro ranges (1000-60000) and the usual
# rootless-container subuid ranges (100000+), below 2**31 so nothing treats them as negative.
_UID_RANGE = (1_500_000_000, 2_000_000_000)
_FALLBACK_UID = 65534  # nobody
_NOFILE = 256
_CHILD_PATH = "/usr/bin:/bin"

# Runs in the child before the user's code, still with our privileges; it must only use the
# standard library (the child runs with -S). Order matters: namespaces and mounts need
# privileges, rlimits must be set before the uid drop for RLIMIT_NPROC to be charged to the new
# uid, ctypes must be gone before the hook goes in, and the hook goes in last.
_PRELUDE = r'''
import builtins, ctypes, json, os, resource, sys, traceback, types

_cfg = json.loads(sys.argv[1])
_BLOCKED, _MEMORY, _SETUP = _cfg["codes"]


def _fail(message):
    os.write(2, ("tunelab sandbox: setup failed: " + message + "\n").encode())
    os._exit(_SETUP)


_libc = ctypes.CDLL(None, use_errno=True)
_layers = ["session"]
_workdir = _cfg["workdir"]
_main_path = os.path.join(_workdir, "main.py")
with open(_main_path, encoding="utf-8") as _f:
    _source = _f.read()
# Listed while we can still see them all.
_import_dirs = sorted({os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}, key=len)

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
_KEEP = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
         "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}


def _unshare(flags):
    return _libc.unshare(flags) == 0


def _mount(source, target, fstype, flags, data):
    enc = lambda s: None if s is None else s.encode()
    if _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount " + target + ": " + os.strerror(err))


def _unescape(path):
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and path[i + 1:i + 4].isdigit():
            out.append(chr(int(path[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def _closed_ancestor(path):
    """The outermost proper ancestor of ``path`` that other users cannot enter, or None."""
    parts = path.strip("/").split("/")[:-1]
    for i in range(len(parts)):
        d = "/" + "/".join(parts[: i + 1])
        if not os.stat(d).st_mode & 0o001:
            return d
    return None


def _expose_stdlib():
    # The interpreter may live under a directory only root can enter (pyenv in /root). Cover
    # that directory with a tmpfs holding nothing but read-only bind mounts of the import
    # directories, which also hides the rest of it (tokens, caches) from the program.
    dirs = [d for i, d in enumerate(_import_dirs) if not any(d.startswith(e + "/") for e in _import_dirs[:i])]
    covers = {}
    for d in dirs:
        top = _closed_ancestor(d)
        if top is not None:
            covers.setdefault(top, []).append(d)
    for top, inner in covers.items():
        fds = [(d, os.open(d, os.O_PATH | os.O_DIRECTORY)) for d in inner]
        _mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
        for d, fd in fds:
            os.makedirs(d, mode=0o755, exist_ok=True)
            _mount("/proc/self/fd/%d" % fd, d, None, MS_BIND, None)
            _mount(None, d, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
            os.close(fd)
        _mount(None, top, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)


def _setup_mounts(uid, gid):
    """Read-only view of everything, a private tmpfs as the working directory; False if not possible."""
    try:
        _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
        with open("/proc/self/mountinfo") as f:
            rows = [line.split() for line in f]
        seen = set()
        skip = ("/proc", "/sys", "/dev")
        for fields in sorted(rows, key=lambda r: len(_unescape(r[4]))):
            target = _unescape(fields[4])
            if target in seen or any(target == s or target.startswith(s + "/") for s in skip):
                continue
            seen.add(target)
            flags = MS_BIND | MS_REMOUNT | MS_RDONLY  # MS_BIND: change this mount only, never the fs
            for opt in fields[5].split(","):
                flags |= _KEEP.get(opt, 0)
            try:
                _mount(None, target, None, flags, None)
            except OSError:
                # A mount shadowed by another one cannot be reached by path anyway.
                if target == "/":
                    raise
        _expose_stdlib()
        for target in ("/dev/shm", "/dev/mqueue"):
            if os.path.isdir(target):
                _mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0755")
        _mount("tmpfs", _workdir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
               "size=%dk,nr_inodes=4096,mode=0700,uid=%d,gid=%d" % (_cfg["disk_mb"] * 1024, uid, gid))
    except OSError:
        return False  # still in the original working directory, which stays usable
    try:
        os.chdir(_workdir)  # our cwd was the directory now hidden under the new mount
        with open(_main_path, "w", encoding="utf-8") as f:
            f.write(_source)
        os.chmod(_main_path, 0o644)
    except OSError as e:
        _fail("working directory tmpfs: " + str(e))
    return True


_uid = _cfg["uid"]
_root = os.geteuid() == 0
if _cfg["namespaces"]:
    if _root:
        if _unshare(CLONE_NEWNET):
            _layers.append("netns")
        if _unshare(CLONE_NEWNS) and _setup_mounts(_uid, _uid):
            _layers.append("mountns")
    else:
        _ouid, _ogid = os.getuid(), os.getgid()
        _ns = CLONE_NEWUSER | CLONE_NEWNET
        _mntns = _unshare(_ns | CLONE_NEWNS)
        if _mntns or _unshare(_ns):
            try:
                with open("/proc/self/setgroups", "w") as f:
                    f.write("deny")
                with open("/proc/self/uid_map", "w") as f:
                    f.write("%d %d 1" % (_ouid, _ouid))
                with open("/proc/self/gid_map", "w") as f:
                    f.write("%d %d 1" % (_ogid, _ogid))
            except OSError as e:
                _fail("user namespace id maps: " + str(e))
            _layers += ["userns", "netns"]
            if _mntns and _setup_mounts(_ouid, _ogid):
                _layers.append("mountns")


def _limit(res, soft, hard=None):
    hard = soft if hard is None else hard
    cur_hard = resource.getrlimit(res)[1]
    if cur_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, cur_hard), min(hard, cur_hard)
    resource.setrlimit(res, (soft, hard))


def _tasks_of(uid):
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/" + pid + "/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(status.get("Uid", "-1 0").split()[0]) == uid:
            count += int(status.get("Threads", "1"))
    return count


try:
    _mem = _cfg["memory_mb"] * 1024 * 1024
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_CPU, _cfg["cpu_s"], _cfg["cpu_s"] + 1)
    _limit(resource.RLIMIT_AS, _mem)
    _limit(resource.RLIMIT_DATA, _mem)
    _limit(resource.RLIMIT_FSIZE, _cfg["disk_mb"] * 1024 * 1024)
    _limit(resource.RLIMIT_NOFILE, _cfg["nofile"])
    _limit(resource.RLIMIT_MEMLOCK, 0)
    _limit(resource.RLIMIT_MSGQUEUE, 0)
    # The new uid owns no task yet; without root the count includes all of our uid's tasks.
    _nproc = _cfg["max_processes"] if _root else _tasks_of(os.getuid()) + _cfg["max_processes"]
    _limit(resource.RLIMIT_NPROC, _nproc)
    _layers.append("rlimits")
except (OSError, ValueError) as e:
    _fail("rlimits: " + str(e))

if _libc.prctl(38, 1, 0, 0, 0) == 0:  # PR_SET_NO_NEW_PRIVS
    _layers.append("no_new_privs")

if _root:
    try:
        os.setgroups([])
        os.setresgid(_uid, _uid, _uid)
        os.setresuid(_uid, _uid, _uid)
    except OSError as e:
        _fail("cannot drop privileges: " + str(e))
    try:
        os.setuid(0)
    except PermissionError:
        _layers.append("uid")
    else:
        _fail("still able to become root after dropping privileges")
elif "userns" in _layers:
    # Capabilities inside the user namespace would let the program undo the mounts.
    class _Hdr(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class _Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    if _libc.capset(ctypes.byref(_Hdr(0x20080522, 0)), (_Data * 2)()) != 0:
        _fail("cannot drop capabilities in the user namespace")

if "mountns" not in _layers:
    for _p in _import_dirs:
        if not os.access(_p, os.R_OK | os.X_OK):
            _fail("the standard library (" + _p + ") is not readable by the sandbox uid and no mount "
                  "namespace is available to expose it; use a Python installed outside /root")
os.umask(0o077)
_report = _cfg["report_fd"]
os.write(_report, json.dumps(_layers + (["audit"] if _cfg["audit"] else [])).encode())
os.close(_report)
# Forget ctypes: a fresh "import ctypes" now has to dlopen again, which the hook refuses.
del _libc
for _name in [n for n in sys.modules if n == "ctypes" or n.startswith(("ctypes.", "_ctypes"))]:
    del sys.modules[_name]


def _install_hook(workdir, blocked_exit):
    # Everything the hook calls is bound here, so the program cannot swap it out afterwards.
    write, exit_, realpath, fspath, fsdecode = os.write, os._exit, os.path.realpath, os.fspath, os.fsdecode
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    prefix = workdir.rstrip("/") + "/"
    devices = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr"})
    deny_prefixes = ("socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "os.fork",
                     "ctypes.", "pty.", "_posixsubprocess.", "gc.get_")
    deny_events = frozenset({"os.system", "os.forkpty", "os.kill", "os.killpg", "signal.pthread_kill",
                             "resource.prlimit", "sqlite3.enable_load_extension", "sqlite3.load_extension"})
    # event -> (indices of path arguments, indices of dir_fd arguments)
    path_events = {
        "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.chflags": ((0,), ()), "os.lchflags": ((0,), ()),
        "os.link": ((0, 1), (2, 3)), "os.mkdir": ((0,), (2,)), "os.mkfifo": ((0,), (2,)),
        "os.mknod": ((0,), (3,)), "os.remove": ((0,), (1,)), "os.rename": ((0, 1), (2, 3)),
        "os.rmdir": ((0,), (1,)), "os.symlink": ((1,), (2,)), "os.truncate": ((0,), ()),
        "os.utime": ((0,), (4,)), "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ()),
        "shutil.rmtree": ((0,), ()), "shutil.chown": ((0,), ()),
    }

    def deny(event, args):
        try:
            detail = repr(args)[:300]
        except BaseException:
            detail = "?"
        write(2, ("\ntunelab sandbox: blocked " + event + " " + detail + "\n").encode("utf-8", "replace"))
        exit_(blocked_exit)

    def inside(path):
        if isinstance(path, int):
            return True  # an already-open descriptor; opening it was checked
        path = fsdecode(fspath(path))
        if path in devices:
            return True
        full = realpath(path)
        return full == workdir or full.startswith(prefix)

    def hook(event, args):
        if event.startswith(deny_prefixes) or event in deny_events:
            deny(event, args)
        elif event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & write_flags)
            if writing and not inside(path):
                deny(event, args)
        elif event == "sqlite3.connect":
            if args and args[0] not in (":memory:", "", b":memory:", b"") and not inside(args[0]):
                deny(event, args)
        elif event in path_events:
            paths, dir_fds = path_events[event]
            if any(i < len(args) and args[i] not in (None, -1) for i in dir_fds):
                deny(event, args)
            if any(i < len(args) and not inside(args[i]) for i in paths):
                deny(event, args)

    sys.addaudithook(hook)


_main = types.ModuleType("__main__")
_main.__file__ = _main_path
_main.__builtins__ = builtins
sys.modules["__main__"] = _main
sys.argv = [_main_path]
if _cfg["audit"]:
    _install_hook(os.path.realpath(_workdir), _BLOCKED)
del _install_hook, _cfg

try:
    exec(compile(_source, _main_path, "exec"), _main.__dict__)
except SystemExit:
    raise
except BaseException as _e:
    # Drop the prelude's own frame from the traceback.
    traceback.print_exception(type(_e), _e, _e.__traceback__.tb_next)
    sys.stderr.flush()
    sys.exit(_MEMORY if isinstance(_e, MemoryError) else 1)
'''


@dataclass(frozen=True)
class SandboxResult:
    """How one sandboxed run ended.

    ``status`` is one of ``STATUSES``: passed (exit 0), failed (other exit code or uncaught
    exception), timeout (wall clock or CPU limit), memory (``MemoryError``), killed (by a signal we
    did not send), blocked (the audit hook stopped a forbidden operation), error (the sandbox
    itself could not be set up; nothing of the program ran). ``stdout``/``stderr`` are decoded
    UTF-8 (invalid bytes replaced), each cut at ``max_output_bytes`` (``truncated`` says so).
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    truncated: bool = False
    layers: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """True only when the program exited 0 within its limits."""
        return self.status == "passed"


def run_program(
    source: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_processes: int = 16,
    max_output_bytes: int = 65_536,
    disk_mb: int = 64,
    audit_hook: bool = True,
    namespaces: bool = True,
) -> SandboxResult:
    """Run Python ``source`` in a contained child process and report how it ended.

    ``timeout_s`` is wall-clock time (CPU time is capped just above it); ``memory_mb`` the
    address-space limit per process; ``max_processes`` the tasks (processes and threads, the
    program's own included) the sandbox uid may have; ``disk_mb`` bounds the working directory
    (and each file). ``audit_hook=False`` / ``namespaces=False`` switch a layer off - only for
    testing that the remaining layers hold on their own. See the module docstring for what is
    and is not guaranteed.
    """
    if not sys.platform.startswith("linux"):
        raise TunelabError("the code sandbox needs Linux (rlimits, namespaces, /proc)")
    if timeout_s <= 0:
        raise TunelabError(f"timeout_s must be > 0, got {timeout_s}")
    if memory_mb < 64:
        raise TunelabError(f"memory_mb must be >= 64 (the interpreter needs ~30 MB), got {memory_mb}")
    if max_processes < 1 or max_output_bytes < 0 or disk_mb < 1:
        raise TunelabError("max_processes and disk_mb must be >= 1 and max_output_bytes >= 0")

    uid = _sandbox_uid() if os.geteuid() == 0 else None
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="tunelab-sandbox-"))
    report_r, report_w = os.pipe()
    try:
        main_py = os.path.join(workdir, "main.py")
        with open(main_py, "w", encoding="utf-8") as f:
            f.write(source)
        os.chmod(main_py, 0o644)
        if uid is not None:
            # Used as is when no mount namespace replaces the directory with a tmpfs.
            os.chown(workdir, uid, uid)
        config = {
            "workdir": workdir, "uid": uid, "memory_mb": memory_mb, "disk_mb": disk_mb,
            "cpu_s": math.ceil(timeout_s) + 1, "max_processes": max_processes, "nofile": _NOFILE,
            "audit": audit_hook, "namespaces": namespaces, "report_fd": report_w,
            "codes": [BLOCKED_EXIT, MEMORY_EXIT, SETUP_EXIT],
        }
        env = {"PATH": _CHILD_PATH, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8", "USER": "sandbox", "LOGNAME": "sandbox"}
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _PRELUDE, json.dumps(config)],
                cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True, pass_fds=(report_w,),
            )
        finally:
            os.close(report_w)
        try:
            out, err, truncated, timed_out = _collect(proc, start + timeout_s, max_output_bytes)
        finally:
            _kill_group(proc.pid)
            proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
            if uid is not None:
                _kill_uid(uid)
        wall_s = time.monotonic() - start
        layers = _read_report(report_r)
    finally:
        os.close(report_r)
        shutil.rmtree(workdir, ignore_errors=True)
    return SandboxResult(
        status=_classify(proc.returncode, timed_out), returncode=proc.returncode,
        stdout=out.decode("utf-8", errors="replace"), stderr=err.decode("utf-8", errors="replace"),
        wall_s=wall_s, truncated=truncated, layers=layers,
    )


def run_many(sources: Iterable[str], *, workers: int = 2, **kwargs: object) -> list[SandboxResult]:
    """``run_program`` over many sources, ``workers`` at a time; results in input order."""
    sources = list(sources)
    if workers < 1:
        raise TunelabError(f"workers must be >= 1, got {workers}")
    if not sources:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(sources))) as pool:
        return list(pool.map(lambda s: run_program(s, **kwargs), sources))  # type: ignore[arg-type]


def _sandbox_uid() -> int:
    """A random uid from ``_UID_RANGE`` that this user namespace maps, else ``nobody``."""
    ranges = []
    for name in ("/proc/self/uid_map", "/proc/self/gid_map"):
        with open(name) as f:
            ranges.append([tuple(int(x) for x in line.split()) for line in f if line.strip()])
    rng = random.SystemRandom()
    for _ in range(16):
        uid = rng.randrange(*_UID_RANGE)
        if all(any(start <= uid < start + n for start, _, n in r) for r in ranges):
            return uid
    return _FALLBACK_UID


def _collect(proc: subprocess.Popen, deadline: float, limit: int) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout/stderr until EOF or ``deadline``, keeping at most ``limit`` bytes of each.

    Returns (stdout, stderr, truncated, timed_out). Reading as we go keeps a chatty program from
    blocking on a full pipe and from filling our memory.
    """
    assert proc.stdout is not None and proc.stderr is not None
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    truncated = timed_out = False
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out = proc.poll() is None
                break
            events = sel.select(timeout=min(deadline - now, 0.05))
            for key, _ in events:
                chunk = os.read(key.fd, 65_536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.fd]
                room = limit - len(buf)
                if len(chunk) > room:
                    truncated = True
                buf += chunk[: max(room, 0)]
            if not events and proc.poll() is not None:
                break  # the program is gone; descendants holding the pipes get killed next
    if not timed_out:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            timed_out = True  # closed its pipes but kept running
    return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), truncated, timed_out


def _kill_group(pgid: int) -> None:
    """SIGKILL the process group and wait (up to ~2 s) until none of its members is alive."""
    for attempt in range(40):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return  # the group is empty
        if not _group_alive(pgid):
            return
        time.sleep(min(0.001 * (attempt + 1), 0.1))


def _group_alive(pgid: int) -> bool:
    """True if a non-zombie process of group ``pgid`` exists."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _uid_of(pid: int) -> tuple[int, bool] | None:
    """(real uid, is zombie) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except (OSError, ValueError):
        return None
    return int(fields["Uid"].split()[0]), fields.get("State", "").strip().startswith("Z")


def _pids_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real uid is ``uid``."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = _uid_of(int(name))
            if info is not None and info[0] == uid and not info[1]:
                pids.append(int(name))
    return pids


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of the per-run ``uid``, including any that left the process group."""
    for attempt in range(100):
        pids = _pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            _kill_if_owned(pid, uid)
        time.sleep(min(0.002 * (attempt + 1), 0.05))  # SIGKILL is asynchronous; let them die


def _kill_if_owned(pid: int, uid: int) -> None:
    """SIGKILL ``pid`` if its real uid is ``uid``; via a pidfd so a reused pid is never hit."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfds (kernel < 5.3): a plain kill, with a tiny pid-reuse window
        info = _uid_of(pid)
        if info is not None and info[0] == uid:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return
    try:
        info = _uid_of(pid)
        if info is not None and info[0] == uid:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        pass  # it died in between
    finally:
        os.close(fd)


def _read_report(fd: int) -> tuple[str, ...]:
    """The layers the prelude reported as active (empty if it died before reporting)."""
    os.set_blocking(fd, False)
    try:
        data = os.read(fd, 65_536)
    except BlockingIOError:
        return ()
    try:
        layers = json.loads(data)
    except ValueError:
        return ()
    return tuple(str(x) for x in layers) if isinstance(layers, list) else ()


def _classify(returncode: int | None, timed_out: bool) -> str:
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == 0:
        return "passed"
    if returncode == BLOCKED_EXIT:
        return "blocked"
    if returncode == MEMORY_EXIT:
        return "memory"
    if returncode == SETUP_EXIT:
        return "error"
    if returncode is None or returncode < 0:
        return "killed"
    return "failed"


__all__ = ["BLOCKED_EXIT", "MEMORY_EXIT", "SETUP_EXIT", "STATUSES", "SandboxResult", "run_many", "run_program"]
