"""The sandbox's launcher: sets up the isolation, then runs the code as an unprivileged child.

Run by path as ``python -I -S launcher.py SPEC_JSON`` (no site-packages: it runs with the server's privileges
until it drops them), usually as the first process of fresh namespaces made by ``unshare``. Standard library
only; it never imports the server's package. It:

1. (namespace modes) builds a new root from an empty read-only tmpfs with read-only bind mounts of the
   interpreter's directories, the working directory (the only writable place) at ``/sandbox``, a few device
   nodes and a fresh ``/proc``, then ``pivot_root``s into it and detaches the old root, so no other path of
   the host (the server's storage, its config, its secrets) exists for the code;
2. forks the worker, which sets the resource limits, drops every privilege (a fresh uid, or no capabilities
   in a user namespace), sets no_new_privs and executes ``python -I -u -`` reading the code from stdin;
3. reaps children until the worker ends and reports how it ended on the status descriptor as one JSON line.
   As pid 1 of its pid namespace, its exit makes the kernel kill every process the code left behind.

A failure of the setup is reported as ``{"setup_error": ...}``, never as the code's own failure.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import sys
import traceback

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
ST_RELATIME = 4096
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 38, 24, 28
SECBIT_NOROOT, SECBIT_NOROOT_LOCKED = 1, 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
SANDBOX_DIR = "/sandbox"
DEVICES = ("null", "zero", "random", "urandom")

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(value: str | None) -> bytes | None:
        return None if value is None else value.encode()

    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _locked_flags(path: str) -> int:
    """The flags of the mount at ``path`` that a remount inside a user namespace must keep (or fail)."""
    flags = os.statvfs(path).f_flag
    kept = flags & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
    return kept | (MS_RELATIME if flags & ST_RELATIME else 0)


def _bind(source: str, target: str, *, writable: bool = False, devices: bool = False) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | _locked_flags(target)
    if not devices:
        flags |= MS_NODEV
    if not writable:
        flags |= MS_RDONLY
    _mount(None, target, None, flags)


def _inside(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _build_root(spec: dict) -> None:
    root = spec["root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path in spec["binds"]:
        target = _inside(root, path)
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "w").close()
        _bind(path, target)
    for link, destination in spec["links"].items():
        os.makedirs(os.path.dirname(_inside(root, link)), exist_ok=True)
        os.symlink(destination, _inside(root, link))
    sandbox = _inside(root, SANDBOX_DIR)
    os.makedirs(sandbox)
    _bind(spec["work"], sandbox, writable=True)
    os.makedirs(_inside(root, "/dev"))
    for name in DEVICES:
        target = _inside(root, f"/dev/{name}")
        open(target, "w").close()
        _bind(f"/dev/{name}", target, writable=True, devices=True)
    os.makedirs(_inside(root, "/proc"))
    _mount("proc", _inside(root, "/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for path in spec["hide"]:
        # Paths inside a bound tree that the code must not read (the server's storage, say): covered.
        target = _inside(root, path)
        if os.path.isdir(target) and not os.path.islink(target):
            _mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=0")
        elif os.path.isfile(target):
            _bind("/dev/null", target)
    _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    number = SYS_PIVOT_ROOT.get(platform.machine())
    os.chdir(root)
    if number is None:
        raise SetupError(f"pivot_root: no syscall number known for {platform.machine()}")
    _check(_libc.syscall(number, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")


def _set_limits(limits: dict) -> None:
    pairs = {
        resource.RLIMIT_CPU: (limits["cpu_s"], limits["cpu_s"] + 1),  # SIGXCPU, then SIGKILL a second later
        resource.RLIMIT_AS: (limits["address_space"],) * 2,
        resource.RLIMIT_NPROC: (limits["processes"],) * 2,
        resource.RLIMIT_FSIZE: (limits["file_size"],) * 2,
        resource.RLIMIT_NOFILE: (limits["open_files"],) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    for which, (soft, hard) in pairs.items():
        resource.setrlimit(which, (soft, hard))


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


def _drop_capabilities() -> None:
    """Root of a user namespace: no capabilities now, none regained by executing anything."""
    with open("/proc/sys/kernel/cap_last_cap") as file:
        last = int(file.read())
    for cap in range(last + 1):
        _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    _check(_libc.prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED, 0, 0, 0), "set securebits")
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def _drop_privileges(spec: dict) -> None:
    if spec["mode"] == "userns":
        _drop_capabilities()
    elif spec["mode"] == "root":
        uid, gid = spec["uid"], spec["gid"]
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if os.geteuid() == 0 or os.getuid() == 0:
            raise SetupError("still root after setresuid")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")


def _worker(spec: dict, status_fd: int) -> None:
    try:
        _set_limits(spec["limits"])
        os.chdir(SANDBOX_DIR if spec["mode"] != "none" else spec["work"])
        _drop_privileges(spec)
        python = spec["python"]
        os.execve(python, [python, "-I", "-u", "-"], spec["env"])
    except BaseException as exc:  # the code never ran: a setup failure, reported as such
        _report(status_fd, {"setup_error": f"worker: {exc}"})
        os._exit(125)


def _report(status_fd: int, status: dict) -> None:
    os.write(status_fd, (json.dumps(status) + "\n").encode())


def main() -> None:
    spec = json.loads(sys.argv[1])
    status_fd = spec["status_fd"]
    os.set_inheritable(status_fd, False)  # closed when the worker executes the code
    try:
        if spec["mode"] != "none":
            _build_root(spec)
    except Exception as exc:
        message = str(exc) if isinstance(exc, SetupError) else traceback.format_exception_only(exc)[-1].strip()
        _report(status_fd, {"setup_error": message})
        sys.exit(125)
    pid = os.fork()
    if pid == 0:
        _worker(spec, status_fd)
    while True:  # pid 1 of the namespace: reap every orphan until the worker ends
        ended, status = os.wait()
        if ended == pid:
            break
    _report(status_fd, {"exit_code": os.waitstatus_to_exitcode(status)})
    os._exit(0)


if __name__ == "__main__":
    main()
