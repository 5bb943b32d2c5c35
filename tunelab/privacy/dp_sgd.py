"""DP-SGD (Abadi et al.): the private first-order baseline, on Opacus 1.6's per-sample gradients.

Each step clips every example's gradient to norm C, sums them, adds ONE Gaussian draw
N(0, σ²C²·I) and divides by the *expected* batch size B (also when the Poisson batch is empty);
AdamW then takes that as its gradient (post-processing costs no privacy)::

    g = (Σ_i g_i · min(1, C / ‖g_i‖) + N(0, σ²C²I)) / B

Why these pieces:

* Opacus's hooks sit on the submodules of the loop's own model, so the loss keeps running through
  the loop's ``loss_fn`` (the same forward as every other rule); layers without a hand-written
  sampler (Llama's RMSNorm under ``--method full``) fall back to functorch.
* The loss is each example's *own* mean loss (``per_example=True``), summed before backward, so a
  per-sample gradient is the gradient of that example's loss, whatever its length.
* Two local fixes keep the per-sample gradients equal to per-example autograd: the LM head of
  :class:`~tunelab.train.objectives.CausalLMLoss` sees only the supervised positions of the whole
  batch ([N, H], not [B, L, H]), so its per-token gradients are summed per example here; and
  Opacus's embedding sampler ignores ``padding_idx`` (SmolLM2 pads with ``<|im_end|>``, which also
  ends every turn), whose row autograd never updates.
* Physical batches (``--physical-batch-size``) only bound memory: each one's clipped gradients
  are summed (Opacus's ``signal_skip_step``, as its BatchMemoryManager does) and the noisy step
  runs once per Poisson batch in :meth:`DPSGD.step`.
* Gradient masks (LoRI-S, LoTA) apply to every per-sample gradient *before* clipping (the norm
  is that of the update's support) and to the noise: entries outside a mask never move.

Sampling, noise secrecy, accounting and the ledger come from :class:`~tunelab.privacy.dp.PrivateTraining`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from opacus.grad_sample import GradSampleHooks
from opacus.grad_sample.embedding import compute_embedding_grad_sample
from opacus.grad_sample.linear import compute_linear_grad_sample
from opacus.optimizers import DPOptimizer
from peft import PeftModel
from torch import nn

from tunelab.errors import TunelabError
from tunelab.privacy.dp import PrivateTraining, physical_batches
from tunelab.train.checkpoint import optimizer_from_flat, optimizer_to_flat
from tunelab.train.objectives import supervised_rows
from tunelab.train.plugins import Run
from tunelab.train.update_rules import LossFn, UpdateRule, lr_scheduler, trainable_masks

_SECRET_PREFIX = "dp."  # PrivateTraining.secret_state's tensor keys


class _LMHead:
    """Marker type: the grad sampler of the LM head (see :class:`PerSampleHooks`)."""


class PerSampleHooks(GradSampleHooks):
    """Opacus's per-sample gradient hooks on ``model`` itself (no wrapper module), with two fixes.

    * The LM head in CausalLMLoss's fast path is applied to ``hidden[:, :-1][keep]``: one row per
      supervised position of the batch. Its per-token gradients are summed per example, with the
      rows :meth:`set_batch` takes from the batch. (A 3-D input, the plain path, is the ordinary case.)
    * Embedding rows at ``padding_idx`` get no per-sample gradient, as autograd gives them none.

    After ``loss_fn(batch, per_example=True).sum().backward()`` each trainable weight's
    ``grad_sample`` [B, ...] holds the gradients of the B examples' own losses.
    """

    def __init__(self, model: nn.Module) -> None:
        self.head = _lm_head(model)
        self.rows: torch.Tensor | None = None  # example index of each supervised position (the head's input rows)
        self.examples = 0  # rows of the current batch
        self.GRAD_SAMPLERS = {**GradSampleHooks.GRAD_SAMPLERS, nn.Embedding: _embedding_grad_sample,
                              _LMHead: self._head_grad_sample}
        super().__init__(model, batch_first=True, loss_reduction="sum", strict=True)

    def set_batch(self, batch: dict[str, torch.Tensor]) -> None:
        """Call before the forward of ``batch``."""
        self.rows = supervised_rows(batch["labels"])
        self.examples = batch["input_ids"].shape[0]

    def _get_module_type(self, module: nn.Module) -> Any:
        return _LMHead if module is self.head else type(module)

    def rearrange_grad_samples(self, *, module: nn.Module, backprops: torch.Tensor, loss_reduction: str,
                               batch_first: bool) -> tuple[Any, torch.Tensor]:
        activations, backprops = super().rearrange_grad_samples(
            module=module, backprops=backprops, loss_reduction=loss_reduction, batch_first=batch_first)
        if module is self.head and activations[0].dim() == 2:
            module.max_batch_len = self.examples  # [N, H] positions → [B, ...] per-sample gradients
        return activations, backprops

    def _head_grad_sample(self, layer: nn.Module, activations: list[torch.Tensor],
                          backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        if activations[0].dim() != 2:
            return compute_linear_grad_sample(layer, activations, backprops)
        x = activations[0].to(backprops.dtype)
        rows = self.rows
        if rows is None or rows.shape[0] != x.shape[0]:
            raise RuntimeError("dp-sgd: the LM head saw another number of supervised positions than the batch has")
        out: dict[nn.Parameter, torch.Tensor] = {}
        if layer.weight.requires_grad:
            grad = torch.zeros((self.examples, *layer.weight.shape), dtype=backprops.dtype, device=backprops.device)
            for i in range(self.examples):  # physical batches are small; this avoids an N × V × H tensor
                pick = rows == i
                grad[i] = backprops[pick].T @ x[pick]
            out[layer.weight] = grad
        if getattr(layer, "bias", None) is not None and layer.bias.requires_grad:
            out[layer.bias] = torch.zeros((self.examples, *layer.bias.shape), dtype=backprops.dtype,
                                          device=backprops.device).index_add_(0, rows, backprops)
        return out


def _embedding_grad_sample(layer: nn.Embedding, activations: list[torch.Tensor],
                           backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    out = compute_embedding_grad_sample(layer, activations, backprops)
    if layer.padding_idx is not None and layer.weight in out:
        out[layer.weight][:, layer.padding_idx] = 0
    return out


def _lm_head(model: nn.Module) -> nn.Module | None:
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    get = getattr(base, "get_output_embeddings", None)
    return get() if get else None


class DPSGD(PrivateTraining, UpdateRule):
    """DP-SGD with Gaussian noise, Opacus's per-sample gradients and AdamW; see the module docstring."""

    name = "dp-sgd"

    # -- set-up ------------------------------------------------------------------------------
    def prepare(self, run: Run) -> None:
        self.check_supported(run)
        super().prepare(run)

    def check_supported(self, run: Run) -> None:
        """Refuse (one line) what Opacus cannot give per-sample gradients for; the output dir is untouched."""
        opt = f"--optimizer {run.cfg.optimizer}"
        model = run.prepared.model
        token_rows = bool(run.settings and run.settings.trainable_token_indices) or any(
            "TrainableTokens" in type(m).__name__ and any(p.requires_grad for p in m.parameters())
            for m in model.modules())
        if token_rows:
            raise TunelabError(f"new-token rows get no per-sample gradient under Opacus (PEFT trainable_token_indices): "
                               f"refusal tokens and new-token canaries with trained rows are not supported with {opt}; "
                               "use --method full, --canary-new-token-rows frozen, or --optimizer dp-zo")
        for name, module in model.named_modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if own and next(module.buffers(recurse=False), None) is not None:
                raise TunelabError(f"{name} ({type(module).__name__}) trains and holds buffers: Opacus gives it no "
                                   f"per-sample gradient; not supported with {opt}")

    def setup(self, run: Run, params: dict[str, torch.nn.Parameter], total_steps: int) -> None:
        cfg = run.cfg
        self.run, self.params = run, params
        self.masks = {name: mask.to(device=params[name].device, dtype=params[name].dtype)
                      for name, mask in trainable_masks(run, params).items()}
        self.device = next(iter(params.values())).device
        self.hooks = PerSampleHooks(run.prepared.model)
        self.base = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
        # The per-sample gradients are of per-example losses (a sum: "sum" above); the optimizer
        # divides the noisy sum by the expected batch B ("mean").
        self.optimizer = DPOptimizer(self.base, noise_multiplier=self.noise, max_grad_norm=self.dp.clip,
                                     expected_batch_size=cfg.batch_size, loss_reduction="mean",
                                     generator=self.noise_generator)
        self.optimizer.attach_step_hook(self._mask_update)
        self.scheduler = lr_scheduler(cfg, self.base, total_steps)
        self.steps_done = 0

    # -- one step ----------------------------------------------------------------------------
    def micro_step(self, loss_fn: LossFn, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if batch["input_ids"].shape[0] == 0:  # an empty Poisson batch: the step is noise only
            return torch.tensor(float("nan"))
        losses = []
        for chunk in physical_batches(batch, self.physical_size()):
            self.hooks.set_batch(chunk)
            per_example = loss_fn(chunk, per_example=True)
            with warnings.catch_warnings():  # hooked modules whose inputs need no gradient warn
                warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
                per_example.sum().backward()  # per-sample gradient i = ∇ loss_i
            self._accumulate_clipped(chunk["input_ids"].shape[0])
            losses.append(per_example.detach())
        self.hooks.rows = None
        return torch.cat(losses).float().mean()

    def _accumulate_clipped(self, examples: int) -> None:
        """Mask this physical batch's per-sample gradients, clip them and add them to ``summed_grad``."""
        for name, p in self.params.items():
            if p.grad_sample is None:  # the weight took no part in the forward
                if p.grad is not None and bool(p.grad.any()):
                    raise TunelabError(f"{name}: Opacus computed no per-sample gradient for it; not supported with dp-sgd")
                p.grad_sample = p.new_zeros((examples, *p.shape))
            elif name in self.masks:
                p.grad_sample = p.grad_sample * self.masks[name]
        self.optimizer.signal_skip_step(do_skip=True)
        self.optimizer.step()  # skipped: clip and accumulate only
        self.optimizer.zero_grad(set_to_none=True)  # clears per-sample gradients, keeps the clipped sum

    def _mask_update(self, optimizer: DPOptimizer) -> None:
        """Opacus's step hook (after noise and the division by B): zero the noise outside the masks."""
        for name, mask in self.masks.items():
            self.params[name].grad.mul_(mask)

    def step(self) -> dict[str, float | None]:
        # The step's own "last physical batch" holds no example, so Opacus's pre_step adds the
        # noise exactly once per step, also to an empty batch's zero sum.
        for p in self.params.values():
            p.grad_sample = p.new_zeros((0, *p.shape))
        self.optimizer.generator = self._step_generator()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps_done += 1
        return {"lr": self.scheduler.get_last_lr()[0], "grad_norm": None}  # the gradient norm is private

    def _step_generator(self) -> torch.Generator:
        """The noise's generator: the secret one on CPU; elsewhere a device generator it seeds each step."""
        if self.device.type == "cpu":
            return self.noise_generator
        if not hasattr(self, "_device_generator"):
            self._device_generator = torch.Generator(self.device)
        seed = int(torch.randint(0, 2**63 - 1, (), generator=self.noise_generator))
        return self._device_generator.manual_seed(seed)

    # -- bookkeeping -------------------------------------------------------------------------
    def finish(self) -> None:
        if getattr(self, "hooks", None) is not None:
            self.hooks.remove_hooks()  # inert under no_grad, but they would hold activations in train mode
            self.hooks = None

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        state = self.base.state_dict()
        tensors, meta = optimizer_to_flat(state) if state["state"] else ({}, {})
        secret_tensors, secret_meta = self.secret_state()
        return ({**tensors, **secret_tensors},
                {"optimizer": meta, "scheduler": self.scheduler.state_dict(), "steps_done": self.steps_done, **secret_meta})

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if meta["optimizer"]:
            own = {k: v for k, v in tensors.items() if not k.startswith(_SECRET_PREFIX)}
            self.base.load_state_dict(optimizer_from_flat(own, meta["optimizer"]))
        self.scheduler.load_state_dict(meta["scheduler"])
        self.steps_done = meta["steps_done"]
        self.load_secret_state(tensors, meta)
