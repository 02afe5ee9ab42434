"""Served vs direct: one edit through HTTP + Redis + worker ÷ the same edit by calling the pipeline directly.

Both run on this machine in one run, interleaved round by round so drift hits both alike:
  - direct:  ``Flux2KleinPipeline.__call__`` (diffusers itself) and our ``BatchedSampler`` on the same input
  - served:  ``POST /edit`` to ``etchr serve editor`` (a subprocess with its in-process worker) over real HTTP

    python bench/served_vs_direct.py                       # tiny checkpoint on CPU (built in a temp dir)
    python bench/served_vs_direct.py --model DIR --device cuda --size 512 --steps 40
"""

from __future__ import annotations

import base64
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch
from local_stack import edit_arg_parser, editor_stack
from PIL import Image

from etchr.imaging import to_model_size
from etchr.tasks import TaskRegistry
from etchr_editor.model import load_editor
from etchr_editor.sampler import BatchedSampler, SampleRequest
from etchr_editor.tiny import save_tiny_editor


def main() -> None:
    parser = edit_arg_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="etchr-bench-"))
    model = args.model or str(save_tiny_editor(work / "tiny"))
    stack_settings = {"ETCHR_EDITOR_MAX_BATCH": "1", "ETCHR_EDITOR_BATCH_WAIT_MS": "0"}
    with editor_stack(model, args.device, stack_settings) as url:
        editor = load_editor(model, device=args.device)
        sampler = BatchedSampler(editor.pipe, max_rows=1)
        image = Image.new("RGB", (args.size, args.size), (180, 40, 40))
        question = "Where is the red mug?"
        prompt = TaskRegistry.default().editor_prompt("perception", question)
        model_image = to_model_size(image, max_pixels=1024 * 1024)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        body = {
            "image": base64.b64encode(buffer.getvalue()).decode(),
            "question": question,
            "task": "perception",
            "seed": 1,
            "steps": args.steps,
            "guidance_scale": args.guidance,
        }

        def direct_pipeline() -> None:
            editor.pipe(
                image=image,
                prompt=prompt,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                generator=torch.Generator().manual_seed(1),
            )

        def direct_sampler() -> None:
            sampler.sample([SampleRequest(model_image, prompt, (1,), args.steps, args.guidance)])

        with httpx.Client(base_url=url, timeout=600) as http:

            def served() -> None:
                response = http.post("/edit", json=body)
                response.raise_for_status()

            runs = {
                "pipeline (diffusers)": direct_pipeline,
                "BatchedSampler": direct_sampler,
                "served /edit": served,
            }
            times: dict[str, list[float]] = {name: [] for name in runs}
            for fn in runs.values():  # warm-up
                fn()
            for _ in range(args.rounds):
                for name, fn in runs.items():
                    started = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - started)

        medians = {name: statistics.median(values) for name, values in times.items()}
        base = medians["pipeline (diffusers)"]
        print(
            f"device={args.device} size={args.size}² steps={args.steps} guidance={args.guidance} "
            f"rounds={args.rounds} torch_threads={torch.get_num_threads()}"
        )
        print(f"{'path':<24}{'median ms':>12}{'÷ pipeline':>12}")
        for name, median in medians.items():
            print(f"{name:<24}{median * 1000:>12.1f}{median / base:>12.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
