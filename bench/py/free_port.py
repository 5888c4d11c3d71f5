#!/usr/bin/env python3
"""Print one free TCP port on 127.0.0.1 (bench/lib.sh's alloc_port).

Usage: free_port.py [USED_PORT...]

The port is picked at random from 20000-32767, below the kernel's ephemeral range, so the
load tools' outgoing connections never race with the benchmark's listeners. Ports given as
arguments (already handed out in this run) are skipped, and so is any port that cannot be
bound right now. Prints nothing if 500 tries found no port.
"""
import random, socket, sys

used = set(int(x) for x in sys.argv[1:])
for _ in range(500):
    p = random.randrange(20000, 32768)
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
