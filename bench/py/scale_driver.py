#!/usr/bin/env python3
"""bench/scale.sh's load driver: N idle connections through a proxy pair, then 1 MiB each.

Usage: scale_driver.py LOCAL_PORT N CONCURRENCY SERVER_PID CLIENT_PID \
                       BEFORE_SERVER_KIB BEFORE_CLIENT_KIB NAME

Opens N connections to 127.0.0.1:LOCAL_PORT (200 at a time), proves each with a one-byte
echo, reports how long that took, waits 2 s (not part of that time: the proxies settle before
their RSS is read), and reports the two proxies' RSS growth per connection per proxy against
the VmRSS values measured before (BEFORE_*_KIB). Then every connection sends 1 MiB
(CONCURRENCY at a time), half-closes, and must get the same bytes back. The last line,
"RESULT NAME per_conn_kib=.. intact=.. opened=.. n=..", is what scale.sh checks.
Environment: HOLD_SECONDS (experiments: keep everything idle that long before the transfer).
"""
import asyncio, hashlib, os, sys, time
port, n, concurrency = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
server_pid, client_pid, before_server, before_client, name = sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1])
block = os.urandom(1 << 20)
async def main():
    connections = []
    opened = asyncio.Semaphore(200)  # open in waves: a SYN flood would only measure the backlog
    async def open_one(i):
        async with opened:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"x"); await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(1), 60) == b"x"
            return reader, writer
    start = time.time()
    results = await asyncio.gather(*(open_one(i) for i in range(n)), return_exceptions=True)
    connections = [r for r in results if not isinstance(r, BaseException)]
    failed_open = n - len(connections)
    open_seconds = time.time() - start  # the opening only, before the settle sleep
    await asyncio.sleep(2)
    server_kib, client_kib = rss(server_pid), rss(client_pid)
    per_conn = (server_kib - before_server + client_kib - before_client) * 1024 / max(1, len(connections)) / 2
    print(f"{name}: {len(connections)} idle mTLS connections open ({failed_open} failed) in {open_seconds:.1f}s; "
          f"RSS server-side {before_server/1024:.1f} -> {server_kib/1024:.1f} MiB, client-side {before_client/1024:.1f} -> {client_kib/1024:.1f} MiB; "
          f"{per_conn/1024:.1f} KiB per connection per proxy", flush=True)
    if os.environ.get("HOLD_SECONDS"):  # experiments: inspect the proxies with everything idle
        await asyncio.sleep(float(os.environ["HOLD_SECONDS"]))
    transfer = asyncio.Semaphore(concurrency)
    async def move(index, pair):
        reader, writer = pair
        payload = index.to_bytes(8, "little") + block[8:]
        async with transfer:
            writer.write(payload); await writer.drain(); writer.write_eof()
            echoed = await asyncio.wait_for(reader.read(-1), 120)
            writer.close()
            return echoed == payload
    start = time.time()
    outcomes = await asyncio.gather(*(move(i, p) for i, p in enumerate(connections)), return_exceptions=True)
    good = sum(1 for o in outcomes if o is True)
    print(f"{name}: {good}/{len(connections)} connections moved 1 MiB each way intact in {time.time() - start:.1f}s", flush=True)
    print(f"RESULT {name} per_conn_kib={per_conn/1024:.1f} intact={good} opened={len(connections)} n={n}", flush=True)
asyncio.run(main())
