"""The program `sandbox.py` starts to run untrusted code: `python -I sandbox_child.py WORKDIR CPU_SECONDS MEMORY_BYTES
FILE_BYTES`. Standard library only, and no lmforge import: it must start fast and trust nothing around it.

It locks itself down before the code runs, each layer on its own:
- resource limits (the kernel's): CPU seconds, address space, the size of any file written, open files, no core
  dumps, and (for a user other than root, who is exempt) the number of processes;
- a network namespace of its own where the kernel allows one (root, or unprivileged user namespaces): no interface
  but a loopback that is down;
- an audit hook (PEP 578, which cannot be removed once added) that refuses sockets, new processes (fork, exec,
  spawn, subprocess), signals to other processes, loading native code through ctypes, and any write, rename or
  removal outside WORKDIR.
Then it reads the job from WORKDIR/job.json (and deletes it, with the tests and the nonce in it), and runs it:

- `asserts`: the code, then each test statement in the same namespace; after each test that raises nothing, the line
  `NONCE INDEX` is written to the result file opened before the code ran. The nonce is random per run, so code that
  prints, or exits early with status 0, cannot claim a test it did not pass.
- `stdio`: the code as `__main__` with stdin from the job's input; the parent compares what it printed.
"""

import json
import os
import resource
import signal
import sys

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000

BLOCKED_EVENTS = {
    "socket.__new__", "socket.bind", "socket.connect", "socket.getaddrinfo", "socket.gethostbyname",
    "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg", "socket.socketpair",
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "pty.spawn",
    "os.kill", "os.killpg", "signal.pthread_kill", "os.startfile",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function", "ctypes.cdata",
    "os.setuid", "os.setgid", "os.chroot", "resource.setrlimit", "resource.prlimit",
}
PATH_EVENTS = {  # event -> positions of the path arguments that must lie inside the work directory
    "os.remove": (0,), "os.rename": (0, 1), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,),
    "os.link": (0, 1), "os.symlink": (1,), "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,),
    "shutil.copyfile": (1,), "shutil.move": (1,), "os.chdir": (0,),
}
BLOCKED_IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess"}  # native calls; processes started below subprocess
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def limit(which: int, value: int) -> None:
    try:
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        pass


def isolate_network() -> None:
    """A network namespace of our own (no route anywhere), where the kernel lets this user make one."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
        libc.unshare(flags)
    except Exception:  # the audit hook still refuses sockets
        pass
    for name in ("ctypes", "_ctypes", "ctypes._endian"):  # a later `import ctypes` must go through the hook
        sys.modules.pop(name, None)


def install_guard(workdir: str) -> None:
    real = os.path.realpath
    root = real(workdir)

    def inside(path) -> bool:
        if isinstance(path, int):  # an open file descriptor: the process may only have opened what it was let
            return True
        try:
            full = real(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return full == root or full.startswith(root + os.sep)

    def guard(event: str, args: tuple) -> None:
        if event in BLOCKED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args and args[0] in BLOCKED_IMPORTS:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1] or "", args[2] or 0
            writes = any(c in str(mode) for c in "wax+") or bool(flags & WRITE_FLAGS)
            if writes and path is not None and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the work directory is not allowed")
        elif event in PATH_EVENTS:
            for position in PATH_EVENTS[event]:
                if position < len(args) and args[position] is not None and not inside(args[position]):
                    raise PermissionError(f"sandbox: {event} on {args[position]!r} is not allowed")

    sys.addaudithook(guard)


def main() -> None:
    workdir, cpu_seconds, memory_bytes, file_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    os.chdir(workdir)
    with open("job.json", encoding="utf-8") as fh:
        job = json.load(fh)
    os.remove("job.json")
    results = open(os.open("results.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", buffering=1)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file past its limit: the write fails, the process goes on
    limit(resource.RLIMIT_CPU, cpu_seconds)
    limit(resource.RLIMIT_AS, memory_bytes)
    limit(resource.RLIMIT_FSIZE, file_bytes)
    limit(resource.RLIMIT_NOFILE, 64)
    limit(resource.RLIMIT_CORE, 0)
    if os.geteuid() != 0:
        limit(resource.RLIMIT_NPROC, 1)  # root is exempt from this limit; the audit hook refuses forks anyway
    isolate_network()
    install_guard(workdir)
    nonce, code, tests, mode = job["nonce"], job["code"], job.get("tests") or [], job["mode"]
    del job
    sys.argv = ["solution.py"]
    if mode == "stdio":
        namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        exec(compile(code, "solution.py", "exec"), namespace)  # an uncaught error: exit status 1
        return
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(compile(code, "solution.py", "exec"), namespace)
    except BaseException as err:  # noqa: BLE001 - the code is untrusted: whatever it raises, its tests fail
        print(f"solution: {type(err).__name__}: {err}", file=sys.stderr)
        return
    for index, test in enumerate(tests):
        try:
            exec(compile(test, f"test_{index}", "exec"), namespace)
        except BaseException as err:  # noqa: BLE001
            print(f"test {index}: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        results.write(f"{nonce} {index}\n")


if __name__ == "__main__":
    main()
