"""The forwarding client's CPU per request and the connections it opens, against a stand-in owner.

    python bench/api_forward.py [--trees . /work/main] [--concurrency 8 64] [--requests 20000]

``stream/worker/api/forward.py`` of each tree (so a baseline checkout in the same run), on uvloop
as in the worker, forwards ``--requests`` GETs to an owner in another process (a plain asyncio
server that answers a 1.5 KB JSON body after 2 ms, so that requests overlap), in bursts of five
times ``--concurrency`` with at most ``--concurrency`` in flight. Per tree and concurrency: the
client process's CPU per request (``time.process_time``: robust to other jobs on the machine,
unlike its latency) and the connections the owner accepted after the warm-up (each one a connect
and an accept, on both workers in the product).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BODY = b'{"x": "' + b"y" * 1500 + b'"}'
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
WARM_UP = 200


def owner(port: int, accepted: Any, ready: Any) -> None:
    """A stand-in owner: every request answered with :data:`ANSWER` after 2 ms, on kept-alive connections."""
    import uvloop

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with accepted.get_lock():
            accepted.value += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await asyncio.sleep(0.002)
                writer.write(ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024)
        ready.set()
        await asyncio.sleep(3600)

    uvloop.run(main())


def client(tree: str, concurrency: int, requests: int) -> None:
    """One measurement (its own process, so that ``tree``'s module is the one imported)."""
    sys.path.insert(0, tree)
    import uvloop

    from stream.kafka.embedded import free_port
    from stream.worker.api.forward import Forwarder

    port = free_port()
    accepted, ready = mp.Value("i", 0), mp.Event()
    server = mp.Process(target=owner, args=(port, accepted, ready), daemon=True)
    server.start()
    ready.wait(30)

    async def run() -> None:
        fwd = Forwarder(5.0)
        url = f"http://127.0.0.1:{port}"
        slots = asyncio.Semaphore(concurrency)
        headers = {"X-Stream-Forwarded": "bench", "Accept": "application/json"}

        async def one() -> None:
            async with slots:
                await fwd.get(url, "/v1/users/u1", headers)

        await asyncio.gather(*(one() for _ in range(WARM_UP)))
        a0, c0, t0 = accepted.value, time.process_time(), time.perf_counter()
        bursts = max(requests // (concurrency * 5), 1)
        for _ in range(bursts):
            await asyncio.gather(*(one() for _ in range(concurrency * 5)))
        n = bursts * concurrency * 5
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        print(f"| {tree} | {concurrency} | {cpu / n * 1e6:.0f} | {n / wall:,.0f} | {accepted.value - a0} |", flush=True)
        fwd.close()

    try:
        uvloop.run(run())
    finally:
        server.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", nargs="+", default=[str(ROOT)], help="source trees whose forward.py is measured")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client(args.client[0], int(args.client[1]), int(args.client[2]))
        return
    print("| tree | concurrency | client µs CPU/request | requests/s | connections opened |")
    print("|---|---|---|---|---|")
    for c in args.concurrency:
        for tree in args.trees:
            cmd = [sys.executable, __file__, "--client", str(Path(tree).resolve()), str(c), str(args.requests)]
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
