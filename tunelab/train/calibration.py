"""LoTA's calibration pass: a short seeded dense fine-tune whose update picks the mask."""

from __future__ import annotations

from typing import Any, Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tunelab.data import Collator, length_grouped_batches
from tunelab.train.config import TrainConfig
from tunelab.train.objectives import CausalLMLoss


def dense_calibration(cfg: TrainConfig, examples: list[Any], pad_token_id: int, device: torch.device,
                      console: Console) -> Callable[[torch.nn.Module, list[torch.nn.Parameter]], None]:
    """LoTA's calibration: one seeded pass of dense AdamW over ``calibration_fraction`` of the data."""

    def run(model: torch.nn.Module, params: list[torch.nn.Parameter]) -> None:
        gen = torch.Generator().manual_seed(cfg.seed)
        n = max(1, min(len(examples), round(cfg.calibration_fraction * len(examples))))
        subset = torch.randperm(len(examples), generator=gen)[:n].tolist()
        chosen = [examples[i] for i in subset]
        batches = length_grouped_batches([len(ex.input_ids) for ex in chosen], cfg.batch_size, cfg.seed, 0)
        collate = Collator(chosen, pad_token_id)
        model.to(device)
        net = CausalLMLoss(model).train()
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        with Progress(TextColumn("[bold]calibration[/]"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("calibrate", total=len(batches), loss=float("nan"))
            for indices in batches:
                batch = {k: v.to(device) for k, v in collate(indices).items()}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(cfg.bf16)):
                    loss = net(**batch)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                bar.update(task, advance=1, loss=loss.item())
        del optimizer

    return run
