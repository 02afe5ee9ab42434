"""Which image runs which process: the one rule docker/, docker-compose.yml and k8s/ must all follow.

Two images are built here. ``etchr/front`` (docker/front.Dockerfile) is slim: the base install, no torch. It
runs every HTTP front: the editor's front without a worker (``etchr serve editor --no-worker``), the
verifier and the reward service. ``etchr/editor`` (docker/editor.Dockerfile, CUDA, ``.[editor]``) runs
whatever holds the diffusion model: the GPU worker (``etchr worker editor``) and the one-box editor whose
front runs its worker in-process (``etchr serve editor``).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
FRONT = "etchr/front"
EDITOR = "etchr/editor"
# Image name -> the Dockerfile that builds it.
DOCKERFILES = {FRONT: DOCKER / "front.Dockerfile", EDITOR: DOCKER / "editor.Dockerfile"}


def runs_the_model(args: list[str]) -> bool:
    """Whether ``etchr ARGS`` loads the editor's model (torch, diffusers): a worker, in-process or not."""
    if args[:2] == ["worker", "editor"]:
        return True
    return args[:2] == ["serve", "editor"] and "--no-worker" not in args


def image_for(args: list[str]) -> str:
    """The image that must run ``etchr ARGS``: the CUDA editor image only where the model is loaded."""
    return EDITOR if runs_the_model(args) else FRONT


def etchr_args(command: list[str]) -> list[str]:
    """``["etchr", "serve", …]`` (a container's command + args) -> ``["serve", …]``."""
    assert command and command[0] == "etchr", f"not an etchr command: {command}"
    return command[1:]
