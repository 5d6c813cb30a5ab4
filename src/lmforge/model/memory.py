"""The memory of a training step, by kind: torch's MemTracker follows every tensor the step creates or touches and
sorts it into parameters, buffers, gradients, optimizer state, activations and temporaries. The same tracer measures a
real step (`memory_report: true`, through the allocator's tensors, not the process's RSS) and plans one over fake
tensors (`lmforge plan`: no weights, no GPU), so the two figures are comparable by construction."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch

# MemTracker's kinds, as the report names them
KINDS = {"Parameter": "parameters", "Buffer": "buffers", "Gradient": "gradients", "Optstate": "optimizer_state",
         "Activation": "activations", "Temp": "temporaries", "Other": "other"}


@dataclass
class StepMemory:
    """Bytes held at the peak of a step, by kind (`total` is their sum)."""

    parameters: int = 0
    buffers: int = 0
    gradients: int = 0
    optimizer_state: int = 0
    activations: int = 0
    temporaries: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        return sum(asdict(self).values())

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def peak_tracker() -> Any:
    """A MemTracker that may see the same model run more than once while it is entered (the micro-batches of
    gradient accumulation, a second step), and frozen parameters (LoRA's base, a reference model).

    Why a subclass: MemTracker keeps per-module statistics for one iteration and refuses a root module's second
    forward; the peak this module reads is kept apart from those statistics, so they are cleared instead (and not
    kept up to date on every operation). It also puts a gradient hook on every parameter, which torch refuses for one
    that needs no gradient."""
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    class PeakTracker(MemTracker):
        def __enter__(self) -> Any:
            # torch's module tracker warns "maybe messed up" when a module runs again inside its own forward's
            # bookkeeping (a decoding loop under no_grad); the peak this tracker reads does not depend on it
            warnings.filterwarnings("ignore", message="The module hierarchy tracking maybe be messed up")
            return super().__enter__()

        def _update_peak_stats(self, peak_state: Any) -> None:
            # the peak over all modules only: MemTracker also updates each active module's own peak on every
            # operation, a walk over all tracked modules that makes a 7B LoRA step take minutes
            for device, snapshot in self._curr_mem_snap.items():
                if self._peak_mem.get(device, 0) < snapshot["Total"]:
                    self._peak_mem[device] = snapshot["Total"]
                    self._peak_mem_snap[device] = dict(snapshot)

        def _track_module_params_and_buffers(self, module: torch.nn.Module,
                                             install_grad_hooks: bool = True) -> tuple[int, int]:
            sizes = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
            for tensor in quantizer_state(module):
                self._update_and_maybe_create_winfos(tensor, _MemRefType.PARAM)
            for param in module.parameters() if install_grad_hooks else ():
                if param.requires_grad and self._param_to_grad_hook_handles.get(param, None) is None:
                    def track(grad: torch.Tensor) -> None:
                        self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

                    self._param_to_grad_hook_handles[param] = (
                        param.register_hook(track), param.register_post_accumulate_grad_hook(lambda p: track(p.grad)))
            return sizes

        def _pre_fw_hook(self, module: torch.nn.Module, inputs: Any) -> None:
            if module in self.memory_tracking and not self._mod_tracker.is_bw:
                name = self._mod_tracker.get_known_fqn(module)
                if set(self._mod_tracker.parents) - {name} == {"Global"}:  # a root module's next iteration
                    self.reset_mod_stats()
            super()._pre_fw_hook(module, inputs)

        # a backward through a module whose statistics were cleared (the policy's, after a reference pass of the
        # same model with its adapters off): nothing to record for it, the peak is tracked all the same
        def _pre_bw_hook(self, module: torch.nn.Module, args: Any) -> None:
            if module is None or module in self.memory_tracking:
                super()._pre_bw_hook(module, args)

        def _post_bw_hook(self, module: torch.nn.Module, args: Any) -> None:
            if module is None or module in self.memory_tracking:
                super()._post_bw_hook(module, args)

    return PeakTracker()


def quantizer_state(model: torch.nn.Module) -> list[torch.Tensor]:
    """Tensors a quantized layer keeps outside its parameters and buffers, which are part of its weight: HQQ's
    scales and zero points (in its `meta` dict)."""
    return [value for module in model.modules() if type(module).__name__ == "HQQLinear"
            for value in getattr(module, "meta", {}).values() if isinstance(value, torch.Tensor)]


def peak_memory(tracker: Any) -> StepMemory:
    """The tracker's peak snapshot (the device holding the most, for a step on one device)."""
    snapshots = tracker.get_tracker_snapshot("peak")
    if not snapshots:
        return StepMemory()
    snapshot = max(snapshots.values(), key=lambda snap: snap.get("Total", 0))
    figures = {KINDS[getattr(kind, "value", kind)]: int(size) for kind, size in snapshot.items()
               if getattr(kind, "value", kind) in KINDS}
    return StepMemory(**figures)
