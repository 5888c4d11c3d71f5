#!/usr/bin/env python3
"""Print one free TCP port on 127.0.0.1 (bench/lib.sh's alloc_port, scripts/lib.sh's free_port).

Usage: free_port.py [--range LOW-HIGH] [USED_PORT...]

The port is picked at random from 20000-32767 unless --range says otherwise: below the
kernel's ephemeral range, so the load tools' outgoing connections never race with the
benchmark's listeners. (The demo, which the test suite runs beside its fixtures' 10000-32000,
asks for the range above the ephemeral one.) Ports given as arguments (already handed out in
this run) are skipped, and so is any port that cannot be bound right now. Prints nothing if
500 tries found no port.
"""
import random, socket, sys

args = sys.argv[1:]
low, high = 20000, 32767
if args[:1] == ["--range"]:
    low, high = (int(x) for x in args[1].split("-"))
    args = args[2:]
used = set(int(x) for x in args)
for _ in range(500):
    p = random.randint(low, high)
    if p in used:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
