#!/usr/bin/env python3
"""Container HEALTHCHECK: exit 0 when the service's probe answers 200, 1 otherwise.

Stdlib only, so the slim front image and the CUDA editor image run the same script. The URL is, in order:

1. the first argument (Compose's per-service ``healthcheck.test`` passes one);
2. ``HEALTHCHECK_URL`` (the editor image sets its front's; set it to check a standalone worker's metrics
   port instead);
3. derived from the container's own command, the command line of PID 1 (or of ``HEALTHCHECK_PID``):
   ``etchr serve SERVICE [--port N]`` is probed at ``http://127.0.0.1:N/readyz``, N defaulting to the
   service's port: /readyz, not /healthz, because a container is healthy only when it can serve (an editor
   whose model failed to load answers /healthz but not /readyz). This is how the one front image, which
   runs the editor front, the verifier or the reward service depending on its command, checks whichever it
   runs without a per-service setting.

Proxies are bypassed: a probe of 127.0.0.1 must never travel through an ``HTTP_PROXY`` set for the MLLM
backends.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

# Where `etchr serve SERVICE` listens without --port (etchr_tools.cli.DEFAULT_PORTS; tests/deploy keeps the
# two equal). Copied, not imported: the probe must not import the package it checks.
DEFAULT_PORTS = {"editor": 8001, "verifier": 8002, "reward": 8003}


def url_from_command(argv: list[str]) -> str | None:
    """The /readyz URL of the ``etchr serve SERVICE [--port N]`` that ``argv`` runs, else None.

    ``argv`` is a process's command line: ``etchr serve reward``, ``python /usr/local/bin/etchr serve …``,
    ``docker-init -- etchr serve …`` or ``sh -c "etchr serve …"`` (hence the split of each argument).
    """
    words = [word for arg in argv for word in arg.split()]
    for i, word in enumerate(words[:-1]):
        if word != "serve" or words[i + 1] not in DEFAULT_PORTS:
            continue
        port = str(DEFAULT_PORTS[words[i + 1]])
        rest = words[i + 2 :]
        for j, option in enumerate(rest):
            if option == "--port" and j + 1 < len(rest):
                port = rest[j + 1]
            elif option.startswith("--port="):
                port = option.partition("=")[2]
        return f"http://127.0.0.1:{port}/readyz" if port.isdigit() else None
    return None


def container_command() -> list[str]:
    """The command line of the container's main process (PID 1, or ``HEALTHCHECK_PID``); [] if unreadable."""
    pid = os.environ.get("HEALTHCHECK_PID", "1")
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        url: str | None = argv[1]
    else:
        url = os.environ.get("HEALTHCHECK_URL") or url_from_command(container_command())
    if not url:
        print(
            "unhealthy: no probe URL: pass one, set HEALTHCHECK_URL, or run `etchr serve SERVICE` as the "
            "container's command",
            file=sys.stderr,
        )
        return 1
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
