"""Reward service throughput vs the ideal and vs a plain client, against a test MLLM at a fixed latency.

The test MLLM (tests/support/mllm_server.py) answers every request after ``--latency`` seconds. For each
concurrency C, in one run:
  - ideal:  C / latency requests per second;
  - plain:  ``asyncio.gather`` of official ``openai`` calls, at most C in flight (a hand-rolled trainer);
  - served: ``/reward`` through the trainer client (API → Redis stream → worker → backend, with
    ``ETCHR_MLLM_CONCURRENCY=C``), fresh images so nothing is cached; then the same batch again (all cache
    hits); and with k = 4 against a backend that honours ``n`` (one request per query) vs one that ignores it.

    python bench/reward_throughput.py --latency 0.1 --concurrency 16,64
    python bench/reward_throughput.py --size 512 --latency 0.5 --concurrency 16,64 --no-k4

CPU seconds per 100 queries are printed beside each rate: plain's all in this process (client and test
MLLM), served's split over this process (trainer client and test MLLM), the service and its redis-server
(Linux /proc). Unlike the rates they barely move with other load on the machine, and they say which
process a free core would speed up.

``--size`` is the side of every image, sent as a trainer sends its edits: PNG (photo-like content, ~0.4 MB at
512²). Edits differ in a PNG text chunk (their bytes and digests differ, so nothing is cached) rather than in
their pixels, so building thousands of them costs no PNG encoding here. The plain client sends those same
bytes as data URLs, one request per query, as a hand-rolled trainer would.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import io
import os
import struct
import sys
import time
import zlib
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import openai
from local_stack import service_stack
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test MLLM server lives in tests/support
from etchr.clients.reward import AsyncRewardClient
from tests.support.mllm_server import RecordedRequest, Reply, ScriptedMLLM

QUESTION = "Which exit does the path reach? (A) left (B) right"


SIZE = 32  # --size


@functools.cache
def base_png(size: int) -> bytes:
    """A photo-like PNG (smooth colour fields plus sensor-like noise): what a 512² edit weighs."""
    rng = np.random.default_rng(size)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-6, 7, (size, size, 3))
    buffer = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def png(seed: int) -> str:
    """Base64 of a distinct ``SIZE``² PNG: the base image with a text chunk naming ``seed`` before IEND."""
    raw = base_png(SIZE)
    text = b"seed\0" + str(seed).encode()
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    return base64.b64encode(raw[:-12] + chunk + raw[-12:]).decode()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def stack_cpu_s() -> dict[str, float]:
    """CPU seconds so far of this process and of the children ``service_stack`` started (service, Redis)."""
    used = {"bench": time.process_time(), "service": 0.0, "redis": 0.0}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
            if int(tail.split()[1]) == os.getpid():  # ppid
                role = "redis" if "redis" in head else "service"
                used[role] += _cpu_s(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return used


def per_100(before: dict[str, float], after: dict[str, float], queries: int) -> dict[str, float]:
    return {role: 100 * (after[role] - before[role]) / queries for role in before}


def respond(request: RecordedRequest) -> Reply:
    return Reply(content=["\\boxed{B}" if request.image_count == 2 else "1"] * request.n)


def reward_service(mllm_url: str, concurrency: int) -> AbstractContextManager[str]:
    return service_stack(
        "reward",
        {
            "ETCHR_MLLM_BASE_URL": mllm_url,
            "ETCHR_MLLM_MODEL": "bench-vlm",
            "ETCHR_MLLM_CONCURRENCY": str(concurrency),
            "ETCHR_REWARD_OPEN_JUDGE": "false",
        },
    )


async def plain_qps(mllm_url: str, concurrency: int, total: int) -> float:
    client = openai.AsyncOpenAI(base_url=mllm_url, api_key="-", max_retries=0)
    limit = asyncio.Semaphore(concurrency)
    original = png(1)
    edits = [png(i) for i in range(total)]  # the trainer's bytes, built before the clock starts

    async def one(i: int) -> None:
        async with limit:
            await client.chat.completions.create(
                model="bench-vlm",
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{original}"}},
                            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{edits[i]}"}},
                            {"type": "text", "text": QUESTION},
                        ],
                    }
                ],
            )

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(total)))
    elapsed = time.perf_counter() - started
    await client.close()
    return total / elapsed


def items(total_queries: int, offset: int, group: int = 8) -> list[dict[str, object]]:
    """total_queries / 2 distinct edits (each a guidance and a correctness query), groups of ``group``."""
    edits = total_queries // 2
    return [
        {
            "id": f"q{offset + start}",
            "image": png(offset + start + 100_000),
            "question": QUESTION,
            "answer": "B",
            "task": "logic",
            "edits": [png(offset + start + j) for j in range(group)],
        }
        for start in range(0, edits, group)
    ]


async def served(url: str, batch: list[dict[str, object]], k: int) -> tuple[float, float, int, int]:
    """(queries/s, MLLM requests/s, requests, cache hits)."""
    async with AsyncRewardClient(url, max_items_per_request=16, max_concurrent_requests=8) as client:
        started = time.perf_counter()
        result = await client.reward(batch, k=k)
        elapsed = time.perf_counter() - started
    usage = result.usage
    return usage.queries / elapsed, usage.mllm_requests / elapsed, usage.mllm_requests, usage.cache_hits


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", default="16,64")
    parser.add_argument("--seconds", type=float, default=4.0, help="ideal duration of each measurement")
    parser.add_argument("--size", type=int, default=32, help="side of every image (PNG), e.g. 512")
    parser.add_argument("--no-k4", dest="k4", action="store_false", help="skip the k = 4 measurements")
    args = parser.parse_args()
    global SIZE
    SIZE = args.size

    rows = []
    with (
        ScriptedMLLM(respond, latency_s=args.latency) as mllm,
        ScriptedMLLM(respond, latency_s=args.latency, honour_n=False) as single,
    ):
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            ideal = concurrency / args.latency
            total = max(64, int(ideal * args.seconds) // 16 * 16)
            before = stack_cpu_s()
            plain = asyncio.run(plain_qps(mllm.base_url, concurrency, total))
            plain_cpu = per_100(before, stack_cpu_s(), total)
            mllm.reset()  # the test MLLM records every request, data URLs included: keep memory flat
            k4 = k4_single = None
            with reward_service(mllm.base_url, concurrency) as url:
                asyncio.run(served(url, items(64, offset=10**6), k=1))  # warm-up
                batch = items(total, offset=0)
                before = stack_cpu_s()
                fresh = asyncio.run(served(url, batch, k=1))
                fresh_cpu = per_100(before, stack_cpu_s(), total)
                cached = asyncio.run(served(url, batch, k=1))
                del batch
                mllm.reset()
                if args.k4:
                    k4 = asyncio.run(served(url, items(total, offset=2 * 10**6), k=4))
                    mllm.reset()
            if args.k4:
                with reward_service(single.base_url, concurrency) as url:
                    k4_single = asyncio.run(served(url, items(total, offset=3 * 10**6), k=4))
                    single.reset()
            rows.append((concurrency, ideal, plain, fresh, cached, k4, k4_single, plain_cpu, fresh_cpu))

    image_kb = len(base64.b64decode(png(0))) / 1024
    print(
        f"test MLLM latency {args.latency:g} s; images {args.size}² PNG ({image_kb:.0f} KB); "
        "reward client → /reward → Redis → worker; 2-core machine"
    )
    for concurrency, ideal, plain, fresh, cached, k4, k4_single, plain_cpu, fresh_cpu in rows:
        print(f"\nC = {concurrency}: ideal {ideal:.0f} req/s")
        print(
            f"  {'plain asyncio.gather of openai calls':<38}{plain:8.1f} req/s   ÷ ideal {plain / ideal:.2f}"
        )
        print(
            f"  {'/reward, nothing cached (k=1)':<38}{fresh[1]:8.1f} req/s   ÷ ideal {fresh[1] / ideal:.2f}"
            f"   ÷ plain {fresh[1] / plain:.2f}"
        )
        print(
            f"  {'CPU s per 100 queries':<38}plain: this process {plain_cpu['bench']:.2f}; served: this "
            f"process {fresh_cpu['bench']:.2f}, service {fresh_cpu['service']:.2f}, "
            f"redis {fresh_cpu['redis']:.2f}"
        )
        print(
            f"  {'/reward, all cache hits':<38}{cached[0]:8.1f} queries/s "
            f"({cached[3]} hits, {cached[2]} requests)"
        )
        for label, k4_row in (
            ("/reward k=4, backend honours n", k4),
            ("/reward k=4, backend ignores n", k4_single),
        ):
            if k4_row is None:
                continue
            qps, rps, requests, _ = k4_row
            print(f"  {label:<38}{qps:8.1f} queries/s {rps:8.1f} req/s ({requests} requests)")


if __name__ == "__main__":
    main()
