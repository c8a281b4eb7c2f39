"""Device choice, CUDA-error fallback and out-of-memory batch halving.

The failures are real torch exception classes raised by the callables under test (no mocking
of torch), so the same code paths run on a CPU-only machine as on a GPU.
"""

from __future__ import annotations

import logging

import pytest
import torch

from cropmodels.device import (
    DeviceChoice,
    DeviceOutOfMemoryError,
    choose_device,
    cuda_unavailable_reason,
    is_cuda_error,
    is_oom_error,
    normalise_spec,
    process_in_batches,
    run_with_cpu_fallback,
    run_with_oom_backoff,
)

NO_CUDA = not torch.cuda.is_available()


def oom(batch: int) -> torch.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError(
        f"CUDA out of memory. Tried to allocate {batch * 0.5:.2f} GiB. GPU 0 has a total "
        "capacity of 7.6 GiB of which 12.0 MiB is free."
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [(None, "auto"), ("", "auto"), (" AUTO ", "auto"), ("cpu", "cpu"), ("CUDA", "cuda"),
     ("cuda:0", "cuda:0"), ("cuda:12", "cuda:12")],
)  # fmt: skip
def test_device_spellings(spec, expected):
    assert normalise_spec(spec) == expected


@pytest.mark.parametrize("spec", ["gpu", "cpu:0", "cuda:", "cuda:-1", "cuda:x", "mps", "auto:1"])
def test_unknown_device_names_the_accepted_ones(spec):
    with pytest.raises(ValueError, match=r"auto .*cpu.*cuda:N"):
        normalise_spec(spec)


def test_cpu_is_always_available():
    choice = choose_device("cpu")
    assert isinstance(choice, DeviceChoice)
    assert choice.device == torch.device("cpu")
    assert "asked" in choice.reason


@pytest.mark.skipif(not NO_CUDA, reason="checks the CPU-only behaviour")
def test_auto_on_a_machine_without_cuda_says_why():
    choice = choose_device("auto")
    assert choice.device.type == "cpu"
    reason = cuda_unavailable_reason()
    assert reason
    assert reason in choice.reason
    if torch.version.cuda is None:
        assert "CPU-only" in choice.reason
        assert "Install dependencies" in choice.reason


@pytest.mark.skipif(not NO_CUDA, reason="checks the CPU-only behaviour")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1"])
def test_asking_for_a_gpu_without_cuda_is_an_actionable_error(spec):
    with pytest.raises(ValueError, match=r"sees no CUDA GPU.*Use device 'cpu'"):
        choose_device(spec)


def test_train_resolve_device_follows_the_same_rule():
    from cropmodels.train import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == choose_device("auto").device


def test_error_classification():
    assert is_oom_error(oom(8))
    assert is_oom_error(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling ..."))
    assert not is_cuda_error(oom(8))
    assert is_cuda_error(torch.AcceleratorError("CUDA error: no kernel image is available"))
    assert is_cuda_error(AssertionError("Torch not compiled with CUDA enabled"))
    assert is_cuda_error(RuntimeError("Found no NVIDIA driver on your system."))
    assert not is_cuda_error(ValueError("bad shape"))
    assert not is_cuda_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom_error(DeviceOutOfMemoryError("final"))


def test_oom_halves_the_batch_until_it_fits(caplog):
    calls: list[int] = []

    def predict_all(batch_size: int) -> str:
        calls.append(batch_size)
        if batch_size > 8:
            raise oom(batch_size)
        return f"done with {batch_size}"

    messages: list[str] = []
    with caplog.at_level(logging.WARNING, logger="cropmodels.device"):
        result = run_with_oom_backoff(predict_all, 64, notify=messages.append)
    assert calls == [64, 32, 16, 8]
    assert result.value == "done with 8"
    assert result.batch_size == 8
    assert messages == [
        "out of device memory with a batch of 64; retrying with 32",
        "out of device memory with a batch of 32; retrying with 16",
        "out of device memory with a batch of 16; retrying with 8",
    ]
    assert len([r for r in caplog.records if "retrying" in r.getMessage()]) == 3


def test_oom_at_the_smallest_batch_is_a_clear_error():
    def never_fits(batch_size: int) -> None:
        raise oom(batch_size)

    with pytest.raises(
        DeviceOutOfMemoryError, match=r"even with a batch of 2.*device 'cpu'"
    ) as info:
        run_with_oom_backoff(never_fits, 16, min_batch_size=2)
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)


def test_other_errors_are_not_retried():
    calls: list[int] = []

    def broken(batch_size: int) -> None:
        calls.append(batch_size)
        raise ValueError("the model card does not match the stack")

    with pytest.raises(ValueError, match="card"):
        run_with_oom_backoff(broken, 64)
    assert calls == [64]


def test_batches_shrink_on_oom_and_keep_every_item_in_order():
    items = list(range(100))
    seen: list[tuple[int, int]] = []

    def step(start: int, stop: int) -> list[int]:
        seen.append((start, stop))
        if stop - start > 12:
            raise oom(stop - start)
        return [x * 2 for x in items[start:stop]]

    messages: list[str] = []
    out = process_in_batches(step, len(items), 50, notify=messages.append)
    assert [x for batch in out for x in batch] == [x * 2 for x in items]
    assert seen[:3] == [(0, 50), (0, 25), (0, 12)]  # the failed slice is retried, smaller
    assert all(stop - start <= 12 for start, stop in seen[3:])  # and the size stays small
    assert messages[-1] == "out of device memory with a batch of 25; continuing with batches of 12"


def test_batches_need_positive_sizes():
    with pytest.raises(ValueError, match=">= 1"):
        process_in_batches(lambda a, b: None, 10, 0)


def test_cuda_error_falls_back_to_the_cpu_with_a_message(caplog):
    """A GPU the build has no kernels for fails at the first operation: the run is redone on
    the CPU (the device object alone needs no GPU, so this runs without one)."""
    x = torch.arange(6.0).reshape(2, 3)

    def run(device: torch.device) -> torch.Tensor:
        if device.type == "cuda":
            raise torch.AcceleratorError(
                "CUDA error: no kernel image is available for execution on the device"
            )
        return (x.to(device) * 2).sum(dim=1)

    notes: list[str] = []
    with caplog.at_level(logging.WARNING, logger="cropmodels.device"):
        result, used = run_with_cpu_fallback(run, torch.device("cuda:0"), notify=notes.append)
    assert used == torch.device("cpu")
    assert result.tolist() == [6.0, 24.0]
    assert len(notes) == 1
    assert "cuda:0 failed (AcceleratorError: CUDA error: no kernel image" in notes[0]
    assert "running again on the CPU" in notes[0]
    assert notes[0] in caplog.text


def test_fallback_also_catches_oom_at_the_smallest_batch():
    def run(device: torch.device) -> str:
        if device.type == "cuda":
            return run_with_oom_backoff(lambda b: (_ for _ in ()).throw(oom(b)), 4).value
        return "cpu result"

    assert run_with_cpu_fallback(run, "cuda") == ("cpu result", torch.device("cpu"))


def test_no_fallback_for_errors_that_are_not_cuda_or_on_the_cpu():
    def wrong_input(device: torch.device) -> None:
        raise ValueError("expected 10 bands, got 4")

    with pytest.raises(ValueError, match="10 bands"):
        run_with_cpu_fallback(wrong_input, torch.device("cuda"))

    def cpu_fails(device: torch.device) -> None:
        raise torch.AcceleratorError("CUDA error: nothing to fall back to")

    with pytest.raises(torch.AcceleratorError):
        run_with_cpu_fallback(cpu_fails, "cpu")


def test_fallback_accepts_a_device_choice():
    result, used = run_with_cpu_fallback(lambda d: d.type, choose_device("cpu"))
    assert (result, used) == ("cpu", torch.device("cpu"))


@pytest.mark.gpu
def test_cuda_choice_names_the_gpu_and_runs_there():
    auto = choose_device("auto")
    assert auto.device == torch.device("cuda:0")
    assert torch.cuda.get_device_name(0) in auto.reason
    explicit = choose_device(f"cuda:{torch.cuda.device_count() - 1}")
    assert explicit.device.type == "cuda"
    with pytest.raises(ValueError, match=r"sees 1 CUDA GPU:|sees \d+ CUDA GPUs:"):
        choose_device(f"cuda:{torch.cuda.device_count()}")
    out, used = run_with_cpu_fallback(lambda d: torch.ones(4, device=d).sum().item(), auto)
    assert (out, used.type) == (4.0, "cuda")


@pytest.mark.gpu
def test_real_cuda_out_of_memory_halves_the_batch():
    """A batch too large for the GPU's memory really raises torch.OutOfMemoryError."""
    free, _total = torch.cuda.mem_get_info()
    per_item = 2**28  # 1 GiB of float32 per item

    def allocate(batch: int) -> int:
        t = torch.empty((batch, per_item), dtype=torch.float32, device="cuda")
        del t
        return batch

    start = 1 << max(1, int(free / 2**30).bit_length() + 1)  # more than fits
    result = run_with_oom_backoff(allocate, start)
    assert result.batch_size < start
    assert result.batch_size * 2**30 <= free
