"""
The HumanEval sandbox: code from the model is hostile, so each program runs in a separate, resource-limited process.
run_program's docstring says what it guards against and what it does not.
"""
import math
import os
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile

# The pass marker is a nonce read from an inherited pipe, so it is in no file, argument or environment variable
# of the child, and it is printed only once the program (ending in check(...)) has run to its end.
HARNESS = """\
import os, sys
def main():
    fd = int(sys.argv[1])
    nonce = os.read(fd, 64)
    os.close(fd)
    with open("program.py") as f:
        code = compile(f.read(), "program.py", "exec")
    exec(code, {"__name__": "__main__"})
    sys.stdout.flush()
    os.write(1, b"\\n" + nonce + b"\\n")
main()
"""
KILL_ALL = "import os\nfor _ in range(3):\n    try: os.kill(-1, 9)\n    except OSError: pass\n"
OUTPUT_LIMIT = 8 << 20  # RLIMIT_FSIZE: also bounds the captured output


def world_usable(path):
    """Can a uid with no rights here run `path` (every folder on the way traversable by others)?"""
    path = os.path.realpath(path)
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        if path == os.path.dirname(path):
            return True
        path = os.path.dirname(path)


def sandbox_python():
    """Our interpreter, unless it lies in a private folder (/root/.pyenv): then the system's python3, which runs the
    stdlib-only HumanEval programs just as well."""
    candidates = (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3")
    return next((p for p in candidates if p and os.path.exists(p) and world_usable(p)), sys.executable)


def set_limits(timeout, memory_mb):
    def apply():  # runs in the child between fork and exec, after the uid switch
        for limit, value in ((resource.RLIMIT_AS, memory_mb << 20), (resource.RLIMIT_CPU, math.ceil(timeout) + 1),
                             (resource.RLIMIT_NPROC, 16), (resource.RLIMIT_FSIZE, OUTPUT_LIMIT), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(limit, (value, value))
    return apply


def run_program(program, timeout=3.0, memory_mb=1024, python=None):
    """Run untrusted `program` in a subprocess; returns "passed", "timed out" or "failed: <last output line>".
    Passed needs exit code 0 AND the nonce, so sys.exit(0)/os._exit(0) before the asserts fails. The child gets a
    fresh temporary folder (removed afterwards), a minimal environment, no stdin, rlimits (memory, CPU, processes,
    file size), its own session, and a wall-clock timeout after which its whole process group is killed.
    As root it also runs under a fresh unused uid: it cannot signal, read or write anything of ours, RLIMIT_NPROC is
    enforced, and afterwards every process of that uid is killed. It can still write world-writable places (/tmp),
    use the network, and read world-readable files; and code that inspects the harness's stack frame can read the
    nonce. As a normal user it runs under your uid and can touch what you can: run the evaluator as root in a
    container or VM for real isolation. This guards against accidents and cheap cheats, not a targeted attack."""
    python = python or sandbox_python()
    uid = 100_000 + secrets.randbelow(1 << 30) if os.geteuid() == 0 else None
    nonce = secrets.token_hex(16).encode()
    r, w = os.pipe()
    os.write(w, nonce)
    os.close(w)
    work = tempfile.mkdtemp(prefix="tokenwise-he-")
    try:
        for name, text in (("program.py", program), ("harness.py", HARNESS)):
            with open(os.path.join(work, name), "w") as f:
                f.write(text)
        if uid is not None:
            os.chown(work, uid, uid)
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
        ids = dict(user=uid, group=uid, extra_groups=[]) if uid is not None else {}
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen([python, "-I", "harness.py", str(r)], cwd=work, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, pass_fds=(r,), start_new_session=True,
                                    preexec_fn=set_limits(timeout, memory_mb), **ids)
            try:
                code, timed_out = proc.wait(timeout), False
            except subprocess.TimeoutExpired:
                code, timed_out = None, True
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the child's session is its process group
            except OSError:
                pass
            if uid is not None:  # and whatever left the group: every process of the throwaway uid
                subprocess.run([python, "-I", "-S", "-c", KILL_ALL], env={}, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **ids)
            proc.wait()
            out.seek(0)
            text = out.read(OUTPUT_LIMIT + 1)
    finally:
        os.close(r)
        shutil.rmtree(work, ignore_errors=True)
    if code == 0 and b"\n" + nonce + b"\n" in text:
        return "passed"
    if timed_out:
        return "timed out"
    if code == 0:
        return "failed: exited with code 0 before check() returned"
    if code < 0:
        return f"failed: killed by {signal.Signals(-code).name}"
    lines = [l for l in text.decode("utf-8", "replace").splitlines() if l.strip()]
    return "failed: " + (lines[-1][:200] if lines else f"exit code {code}")
