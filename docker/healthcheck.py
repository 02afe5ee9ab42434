#!/usr/bin/env python3
"""Container HEALTHCHECK: exit 0 when the service's probe answers 200, 1 otherwise.

Stdlib only, so the slim images and the CUDA image run the same script. The URL comes from the first
argument or ``HEALTHCHECK_URL`` (each image sets its own probe), so the editor image can check a standalone
worker's metrics port instead of the HTTP front. Proxies are bypassed: a probe of 127.0.0.1 must never
travel through an ``HTTP_PROXY`` set for the MLLM backends.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get("HEALTHCHECK_URL", "http://127.0.0.1:8001/healthz")
    timeout_s = float(os.environ.get("HEALTHCHECK_TIMEOUT_S", "4"))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            if response.status == 200:
                return 0
            print(f"unhealthy: {url} answered {response.status}", file=sys.stderr)
    except Exception as exc:  # any failure to get a 200 is "unhealthy", never a traceback
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
