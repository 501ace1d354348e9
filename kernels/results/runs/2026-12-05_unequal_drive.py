import subprocess as sp, sys, os
from concurrent.futures import ThreadPoolExecutor
exec(open(sys.argv[1]).read())   # defines C: list of (label, name, K, V, dtype, T, switches)
def one(c):
    label, *a = c
    try:
        case = os.path.join(os.path.dirname(__file__), "2026-12-05_unequal_case.py")
        r = sp.run([sys.executable, case, *map(str, a)], capture_output=True, text=True, timeout=240)
        err = r.stderr.strip().splitlines()
        tail = " ERR " + err[-1][:150] if r.returncode else ""
        return f"{label:28s} {a[:5]} {a[5][:60]!r}: " + r.stdout.strip() + tail
    except Exception as ex:
        return f"{label:28s} {a}: TIMEOUT {ex}"
with ThreadPoolExecutor(int(os.environ.get("J", "4"))) as ex:
    for line in ex.map(one, C):
        print(line, flush=True)
