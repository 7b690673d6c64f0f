"""Static sizes, peak memory and latency: counted by hand, measured in both runtimes, limits enforced."""

from __future__ import annotations

import io
import os
import platform
import statistics
import tempfile

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY_SPEC, merge, run_cli
from mixsearch.arch import BlockArch, MixerArch, MobileNetArch
from mixsearch.cli.render import latency_provenance
from mixsearch.errors import ArchError
from mixsearch.measure import MeasureConfig, measure_static, static_sizes
from mixsearch.measure.latency import (Reference, ReferenceNetwork, SplitLatency, export_onnx_bytes, fastest,
                                       measure_latency, onnx_call, reference_call, time_relative)
from mixsearch.measure.memory import peak_memory
from mixsearch.models import build_model, inference_model
from mixsearch.spec import parse_spec
from mixsearch.export import export_record
from mixsearch.measure import machine_description
from mixsearch.study import run_study
from mixsearch.trial import Reporter

FLOAT = 4  # bytes


# -- peak memory, counted by hand ----------------------------------------------------------------

def test_peak_memory_of_a_chain_counted_by_hand():
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    profile = peak_memory(chain, torch.zeros(2, 10))
    assert profile.weight_bytes == (10 * 20 + 20 + 20 * 5 + 5) * FLOAT == 1300
    # batch 2: x 20, h 40, relu(h) 40, out 10 floats. At the ReLU, h and its result are alive
    # (x was freed after the first Linear): 80 floats.
    assert profile.peak_activation_bytes == 80 * FLOAT
    assert profile.peak_node == "_1" and profile.live_at_peak == ("_0", "_1")
    assert profile.activation_bytes_written == (20 + 40 + 40 + 10) * FLOAT
    assert profile.peak_bytes == 1300 + 320


def test_in_place_and_views_make_no_new_tensor_and_shared_weights_count_once():
    shared = nn.Linear(10, 10)
    chain = nn.Sequential(shared, nn.ReLU(inplace=True), shared, nn.Flatten(0))
    profile = peak_memory(chain, torch.zeros(2, 10))
    assert profile.weight_bytes == 110 * FLOAT
    # x 20 → h 20 (ReLU writes into h) → out 20 (flatten is a view of it): at most two alive.
    assert profile.peak_activation_bytes == 40 * FLOAT
    assert profile.activation_bytes_written == 60 * FLOAT


def test_shape_keeping_modules_skipped_on_meta_give_the_profile_of_running_every_op(monkeypatch):
    import mixsearch.measure.memory as memory

    archs = [MixerArch(1, (28, 28), 10, 2, 16, 32, 64, 4, 2), MixerArch(1, (28, 28), 10, 3, 32, 16, 64, 7,
             token_mixing="raft", raft_size=4, sharing={"channel.fc1": (0, 0, 1)})]
    for arch in archs:
        with torch.device("meta"):
            model = inference_model(build_model(arch))
        example = torch.zeros((2, 1, 28, 28), device="meta")

        def not_run(module, x):
            raise AssertionError(f"{type(module).__name__} ran on meta tensors")
        with monkeypatch.context() as patched:
            patched.setattr(nn.LayerNorm, "forward", not_run)
            patched.setattr(nn.GELU, "forward", not_run)
            skipped = peak_memory(model, example)
        with monkeypatch.context() as patched:
            patched.setattr(memory, "SHAPE_KEEPING", ())  # every layer norm and GELU runs its meta op
            assert peak_memory(model, example) == skipped
        # and both agree with a pass on real tensors
        real = inference_model(build_model(arch))
        assert peak_memory(real, torch.zeros(2, 1, 28, 28)) == skipped


def one_block_mobilenet(mode: str) -> MobileNetArch:
    # 1x8x8 image → stem 3x3 conv to 6 channels → one 3x3 stride-2 block to 8 channels → head.
    return MobileNetArch(1, (8, 8), 10, 6, (BlockArch(8, 3, 2, mode),))


# Floats, batch 1: image 64, stem output 6·8·8 = 384; depthwise output 6·4·4 = 96; block output
# 8·4·4 = 128. Weights of the inference form: stem 6·9+6 = 60, head 8·10+10 = 90, and the block:
# separable 6·9+6 + 6·8+8 = 116, fused and linear one 3x3 conv 6→8: 6·8·9+8 = 440.
@pytest.mark.parametrize("mode, block_weights, peak, live, written", [
    # the depthwise output is made and alive with the stem output (384 + 96), then with the
    # pointwise output (96 + 128): the peak is at the depthwise conv.
    ("separable", 116, 384 + 96, ("features_0_0", "features_1_0"), 64 + 384 + 96 + 128 + 8 + 10),
    # one conv: stem output and block output (384 + 128); no depthwise output is ever made.
    ("fused", 440, 384 + 128, ("features_0_0", "features_1_0"), 64 + 384 + 128 + 8 + 10),
    # trained factorized, deployed as the composed conv: the same graph as fused.
    ("linear", 440, 384 + 128, ("features_0_0", "features_1_0"), 64 + 384 + 128 + 8 + 10),
])
def test_peak_memory_of_one_mobilenet_block_per_fusion_mode(mode, block_weights, peak, live, written):
    arch = one_block_mobilenet(mode)
    sizes = static_sizes(arch, (1, 8, 8))
    memory = sizes.memory
    assert memory.weight_bytes == (60 + block_weights + 90) * FLOAT
    assert memory.peak_activation_bytes == peak * FLOAT
    assert memory.live_at_peak == live
    assert memory.activation_bytes_written == written * FLOAT
    assert sizes.memory.peak_bytes == (60 + block_weights + 90 + peak) * FLOAT
    convs = [m for m in inference_model(build_model(arch)).features[1] if isinstance(m, nn.Conv2d)]
    assert [c.groups for c in convs] == ([6, 1] if mode == "separable" else [1])


def test_static_sizes_on_meta_equal_the_real_model():
    arch = MixerArch(1, (28, 28), 10, layers=2, channels=16, token_hidden=16, channel_hidden=32, patch_size=4,
                     token_mixing="raft", raft_size=2)
    sizes = static_sizes(arch, (1, 28, 28), batch_size=3)
    model = build_model(arch)
    real = peak_memory(inference_model(model), torch.zeros(3, 1, 28, 28))
    assert sizes.memory == real
    assert sizes.params == sum(p.numel() for p in model.parameters())
    from mixsearch.measure import count_flops
    assert sizes.flops == sizes.inference_flops == count_flops(model, (1, 28, 28))


# -- limits: refused before allocation -------------------------------------------------------------

@pytest.mark.parametrize("arch, message", [
    (MixerArch(1, (28, 28), 10, 2, 16, 10**9, 32, 4), r"params 198,000,\d{3},\d{3} is over the limit of 100,000,000"),
    (MixerArch(1, (28, 28), 10, 10**6, 16, 16, 32, 4), "1,000,000 Mixer layers is over the limit of 64"),
    (MobileNetArch(1, (28, 28), 10, 8, (BlockArch(10**7),)), "is over the limit of 100,000,000"),
    (MixerArch(1, (28, 28), 10, 2, 10**10, 16, 32, 4), "channels 10,000,000,000 is over the limit"),
])
def test_absurd_archs_are_impossible_with_figure_and_limit(arch, message):
    with pytest.raises(ArchError, match=message):
        static_sizes(arch, (1, 28, 28))


ABSURD = {  # spec changes → what the one line says
    "hidden-width-1e9": ({"space": {"token_hidden": 10**9}},
                         ["absurd.yaml: space: no buildable arch", "params", "is over the limit of 100,000,000"]),
    # the spec's own bound on layers is the static limit: refused while parsing
    "million-layers": ({"space": {"layers": 10**6}},
                       ["absurd.yaml: space.layers: must be an integer >= 1 and <= 64, got 1000000"]),
    "channels-1e7": ({"space": {"family": "mobilenet", "blocks": 2, "stem_channels": 8, "width": 10**7,
                                "strides": "1,2", "kernel_size": 3}},
                     ["absurd.yaml: space: no buildable arch", "params", "is over the limit of 100,000,000"]),
}


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("name", list(ABSURD))
def test_absurd_sizes_are_refused_by_the_cli(tmp_path, command, name):
    import yaml
    changes, expected = ABSURD[name]
    spec = merge(TINY_SPEC, changes)
    if spec["space"]["family"] == "mobilenet":
        spec["space"] = changes["space"]
    (tmp_path / "absurd.yaml").write_text(yaml.safe_dump(spec))
    result = run_cli([command, "absurd.yaml"], tmp_path, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stdout + result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["absurd.yaml"]


# -- latency in both runtimes -------------------------------------------------------------------

SMALL = MixerArch(1, (28, 28), 10, layers=1, channels=8, token_hidden=8, channel_hidden=8, patch_size=7)
LARGE = MixerArch(1, (28, 28), 10, layers=4, channels=128, token_hidden=256, channel_hidden=512, patch_size=2)


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_a_large_arch_is_much_slower_than_a_small_one(runtime):
    torch.manual_seed(0)
    small, large = (inference_model(build_model(a)) for a in (SMALL, LARGE))
    times = {name: [] for name in ("small", "large")}
    for _ in range(2):  # interleaved, so a burst of load on the machine hits both
        for name, model in (("small", small), ("large", large)):
            times[name].append(measure_latency(model, (1, 28, 28), runtime, 1, 1, 0.05).ms)
    # ~1,000× the FLOPs; the large arch is slower by far more than any noise
    assert min(times["large"]) > 5 * max(times["small"]), times


def test_latency_is_a_ratio_to_the_reference_in_its_ms():
    call = reference_call((1, 28, 28), "onnxruntime", 1, 1)
    reference = Reference(call, ms=2.0)  # any figure: the result is in its units

    def twice():
        call()
        call()
    # The median of three: one short measurement here was off by a fifth, in a spell where the
    # machine reached full speed for single blocks only (docs/performance.md).
    same = statistics.median(time_relative(call, reference, 0.05).ms for _ in range(3))
    double = statistics.median(time_relative(twice, reference, 0.05).ms for _ in range(3))
    # the reference against itself is 1× its figure; twice its work, 2× (within a slow spell's noise)
    assert 1.8 < same < 2.2, same
    assert 3.4 < double < 4.6, double
    assert 1.7 < double / same < 2.3
    assert time_relative(call, reference, 0.05).iqr_ms < 0.5


def test_the_fastest_block_is_the_figure_and_a_jump_of_the_clock_is_skipped():
    blocks = [1.3e-4, 1.1e-4, 1.25e-4, 1.6e-4, 1.2e-4]
    assert fastest(blocks) == 1.1e-4  # slow spells only ever add time
    # a block of 0 s, or one far under the rest, is the thread clock jumping: no block runs that fast
    assert fastest(blocks + [0.0, 0.4e-4, -1e-5]) == 1.1e-4


class ScriptedMachine:
    """A clock and two calls whose cost it scripts: until ``slow_until`` (in its own seconds) the
    machine is in a slow spell that slows the arch by 1.5× and the reference by 1.3×."""

    def __init__(self, slow_until: float):
        self.now, self.slow_until, self.arch_seconds = 0.0, slow_until, 0.0

    def clock(self) -> float:
        return self.now

    def arch(self) -> None:
        cost = 2e-4 * (1.5 if self.now < self.slow_until else 1.0)
        self.now += cost
        self.arch_seconds += cost

    def reference(self) -> None:
        self.now += 1e-4 * (1.3 if self.now < self.slow_until else 1.0)


@pytest.mark.parametrize("slow_seconds, full_speed", [(0.5, 1e-4), (10.0, 1e-4), (0.5, 1.28e-4)])
def test_a_measurement_that_finds_the_machine_slow_goes_on_until_it_is_back_at_full_speed(
        monkeypatch, slow_seconds, full_speed):
    import mixsearch.measure.latency as latency

    machine = ScriptedMachine(slow_until=slow_seconds)
    monkeypatch.setattr(latency, "_clock", lambda threads: machine.clock)
    reference = Reference(machine.reference, ms=full_speed * 1e3)
    result = time_relative(machine.arch, reference, min_time=0.1, early_stop=False)
    block = 3e-4  # the arch's longest block: its warm-up and its last block overshoot by less each
    timed = lambda: machine.arch_seconds - latency.WARMUP_SECONDS  # noqa: E731
    if slow_seconds == 10.0:
        # never back at full speed: it stops at EXTEND_FACTOR × min_time, with the spell's ratio
        assert 0.1 * latency.EXTEND_FACTOR <= timed() < 0.1 * latency.EXTEND_FACTOR + 2 * block
        assert result.ms == pytest.approx(full_speed * 1e3 * 3 / 1.3, rel=1e-6)
    elif full_speed > 1e-4:
        # the spell's reference is within FULL_SPEED_TOLERANCE of this full speed: min_time, no more
        assert 0.1 <= timed() < 0.1 + 2 * block
    else:
        # it went on past min_time, out of the spell, and stopped there with the full-speed ratio
        assert slow_seconds < machine.now < slow_seconds + 0.002
        assert timed() > 0.15
        assert result.ms == pytest.approx(2 * full_speed * 1e3, rel=1e-6)
    # without a full-speed figure a measurement spends min_time, whatever the machine's speed
    machine.now = machine.arch_seconds = 0.0
    latency.interleaved_blocks(machine.arch, machine.reference, 0.1)
    assert 0.1 <= timed() < 0.1 + 2 * block


class DriftingMachine(ScriptedMachine):
    """Never slow, but every arch call costs 2% more than the one before: no fastest block repeats."""

    def arch(self) -> None:
        cost = 2e-4 * 1.02 ** (self.arch_seconds / 2e-4)
        self.now += cost
        self.arch_seconds += cost


def test_a_measurement_ends_early_once_both_fastest_blocks_are_confirmed(monkeypatch):
    import mixsearch.measure.latency as latency

    monkeypatch.setattr(latency, "_clock", lambda threads: machine.clock)
    # a steady machine: MIN_BLOCKS blocks of 2 calls (0.4 ms) each, not the 0.1 s of min_time
    machine = ScriptedMachine(slow_until=0.0)
    result = time_relative(machine.arch, Reference(machine.reference, ms=0.1), min_time=0.1)
    assert result.ms == pytest.approx(0.2, rel=1e-6)
    assert machine.arch_seconds - latency.WARMUP_SECONDS < 0.003
    # in a slow spell the reference is not at full speed: it goes on past the spell, then stops
    # once the full-speed blocks are confirmed (CONFIRM_BLOCKS more of each), long before 4 × min_time
    machine = ScriptedMachine(slow_until=0.5)
    result = time_relative(machine.arch, Reference(machine.reference, ms=0.1), min_time=0.1)
    assert result.ms == pytest.approx(0.2, rel=1e-6)
    assert 0.5 < machine.now < 0.5 + 0.6e-3 * (latency.CONFIRM_BLOCKS + 2)
    # a fastest block that no later block comes near is not confirmed: the whole min_time is spent
    machine = DriftingMachine(slow_until=0.0)
    time_relative(machine.arch, Reference(machine.reference, ms=0.1), min_time=0.1)
    assert machine.arch_seconds - latency.WARMUP_SECONDS >= 0.1


def test_a_process_that_never_reaches_the_studys_reference_figure_extends_once(monkeypatch):
    """On another machine, or wherever the reference runs slower than the study's figure, only the
    first measurement goes on to the limit: after it, the process's own fastest block is full speed."""
    import mixsearch.measure.latency as latency

    machine = ScriptedMachine(slow_until=float("inf"))  # 1.3× the study's reference figure, always
    monkeypatch.setattr(latency, "_clock", lambda threads: machine.clock)
    reference = Reference(machine.reference, ms=0.1)
    spent = []
    for _ in range(3):
        machine.arch_seconds = 0.0
        time_relative(machine.arch, reference, min_time=0.1, early_stop=False)
        spent.append(machine.arch_seconds - latency.WARMUP_SECONDS)
    assert spent[0] >= 0.1 * latency.EXTEND_FACTOR
    assert all(0.1 <= seconds < 0.1 + 6e-4 for seconds in spent[1:]), spent
    # and with early stops, the later ones end once their steady blocks are confirmed
    machine.arch_seconds = 0.0
    time_relative(machine.arch, reference, min_time=0.1)
    assert machine.arch_seconds - latency.WARMUP_SECONDS < 0.01


def test_one_unusually_fast_reference_block_does_not_make_every_later_measurement_go_on(monkeypatch):
    """The process's full speed is the median of its measurements' fastest reference blocks: after
    one measurement that met a reference block faster than the machine gives again, later ones stop
    going on to the limit once that block is outvoted (with the fastest ever, none would)."""
    import mixsearch.measure.latency as latency

    machine = ScriptedMachine(slow_until=float("inf"))  # the reference at 1.3e-4 s, over the study's 1e-4
    monkeypatch.setattr(latency, "_clock", lambda threads: machine.clock)
    # Six calls in a row at 1.2e-4 s during the first measurement: at 3 calls a block, one whole
    # block that fast, never again.
    lucky = {"left": 6}

    def reference_once_lucky():
        if lucky["left"] and machine.now > 0.1:  # after the warm-ups, in a timed block
            lucky["left"] -= 1
            machine.now += 1.2e-4
        else:
            machine.reference()
    reference = Reference(reference_once_lucky, ms=0.1)
    spent = []
    for _ in range(6):
        machine.arch_seconds = 0.0
        time_relative(machine.arch, reference, min_time=0.1, early_stop=False)
        spent.append(machine.arch_seconds - latency.WARMUP_SECONDS)
    assert spent[0] >= 0.1 * latency.EXTEND_FACTOR  # the first knows no full speed but the study's
    # 1.2e-4 and then 1.25e-4 (the median of 1.2 and 1.3) as full speed: 1.3e-4 is over 3% slower
    assert all(seconds >= 0.1 * latency.EXTEND_FACTOR for seconds in spent[1:3]), spent
    assert all(0.1 <= seconds < 0.1 + 9e-4 for seconds in spent[3:]), spent


class SpellOnTheArchOnly:
    """A clock and two calls: while ``spell`` is on, the arch runs 1.25× slower and the reference
    not at all: the kind of slow spell that its reference blocks do not show."""

    def __init__(self):
        self.now, self.spell, self.arch_seconds = 0.0, False, 0.0

    def arch(self) -> None:
        cost = 2e-4 * (1.25 if self.spell else 1.0)
        self.now += cost
        self.arch_seconds += cost

    def reference(self) -> None:
        self.now += 1e-4


def test_a_split_latency_keeps_the_faster_of_its_two_halves(monkeypatch):
    import mixsearch.measure.latency as latency

    machine = SpellOnTheArchOnly()
    monkeypatch.setattr(latency, "_clock", lambda threads: lambda: machine.now)
    split = SplitLatency(machine.arch, Reference(machine.reference, ms=0.1), min_time=0.1, threads=1, runtime="torch",
                          early_stop=False)
    machine.spell = True
    first = split.time_half()
    assert first.ms == pytest.approx(0.25, rel=1e-6)  # the spell's figure, 1.25× too slow
    assert latency.WARMUP_SECONDS + 0.05 <= machine.arch_seconds < latency.WARMUP_SECONDS + 0.05 + 3e-4 * 2
    machine.spell, machine.arch_seconds = False, 0.0
    second = split.time_half()
    assert second.ms == pytest.approx(0.2, rel=1e-6) and split.halves_ms == pytest.approx([0.25, 0.2])
    # the second half spends half the time too; its warm-up is one block of each call, not another search for the block size
    assert 0.05 <= machine.arch_seconds < 0.05 + 2 * 3e-4
    assert second.iqr_ms > 0  # both halves' block ratios: 0.25 and 0.2 ms
    split.close()
    with pytest.raises(RuntimeError, match="both halves are timed already"):
        split.time_half()


def _trial_events(monkeypatch, tmp_path, extra: dict, trainer=None):
    """Run a one-trial study; return (trial, events): each latency half and each training, in order."""
    import mixsearch.trial
    from mixsearch.train import train

    events = []
    time_half = SplitLatency.time_half

    def recorded_half(self):
        latency = time_half(self)
        events.append(("half", latency.ms))
        return latency

    def recorded_train(*args, **kwargs):
        events.append(("train", None))
        return (trainer or train)(*args, **kwargs)

    monkeypatch.setattr(SplitLatency, "time_half", recorded_half)
    monkeypatch.setattr(mixsearch.trial, "train", recorded_train)
    monkeypatch.chdir(tmp_path)
    data = merge(TINY_SPEC, {"study": {"trials": 1}, "objectives": ["accuracy", "latency"],
                             "measure": {"latency_min_time": 0.02}, **extra})
    summary = run_study(parse_spec(data, "split.yaml"), storage_url=f"sqlite:///{tmp_path / 's.db'}",
                        artifacts=str(tmp_path / "art"))
    (trial,) = summary.study.get_trials()
    return trial, events


def test_a_trial_times_its_latency_before_and_after_training_and_keeps_the_faster_half(tmp_path, monkeypatch):
    trial, events = _trial_events(monkeypatch, tmp_path, {})
    assert [kind for kind, _ in events] == ["half", "train", "half"]
    # each half reports the figure so far: the second is the faster of both, and that is stored
    assert events[2][1] <= events[0][1]
    assert trial.user_attrs["latency_ms"] == events[2][1] == trial.values[1]


def test_a_pruned_trial_times_its_second_half_too(tmp_path, monkeypatch):
    from mixsearch.train import DivergenceError, TrainResult

    def diverges(*args, **kwargs):
        raise DivergenceError(1, 1, TrainResult())
    trial, events = _trial_events(monkeypatch, tmp_path, {}, trainer=diverges)
    assert trial.state.name == "PRUNED" and trial.user_attrs["pruned_reason"].startswith("diverged")
    assert [kind for kind, _ in events] == ["half", "train", "half"]
    assert trial.user_attrs["latency_ms"] == events[2][1]


def test_an_arch_over_a_latency_bound_on_its_first_half_is_judged_on_both(tmp_path, monkeypatch):
    trial, events = _trial_events(monkeypatch, tmp_path, {"constraints": {"latency": 1e-6}})
    assert [kind for kind, _ in events] == ["half", "half"]  # no training: infeasible on the whole figure
    assert trial.user_attrs["latency_ms"] == events[1][1]
    assert trial.user_attrs["infeasible_reason"] == f"latency {events[1][1]:g} > 1e-06"


def test_eager_torch_gets_more_time_by_default_and_a_spec_can_say_otherwise():
    assert MeasureConfig().latency_min_time == 0.2
    assert MeasureConfig(runtime="torch").latency_min_time == 0.4
    assert MeasureConfig(runtime="torch", latency_min_time=0.1).latency_min_time == 0.1
    torch_spec = parse_spec(merge(TINY_SPEC, {"measure": {"runtime": "torch", "latency_min_time": None}}), "t.yaml")
    assert torch_spec.measure.latency_min_time == 0.4


def test_the_reference_network_runs_on_any_input_shape_and_keeps_the_random_stream():
    for shape in ((1, 28, 28), (3, 32, 32), (2, 3, 1)):
        assert ReferenceNetwork(shape)(torch.zeros(1, *shape)).shape == (1, 10)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    ReferenceNetwork((1, 28, 28))
    assert torch.equal(torch.rand(3), expected)  # building it did not draw from the caller's stream


def test_in_memory_export_matches_torch_and_leaves_no_file(tmp_path, monkeypatch):
    # Once per process, torch's first meta-tensor shape functions make its (empty) compile-cache
    # folder in the temp dir, and onnxruntime's first session writes its 51-byte telemetry
    # session id (.ses) there. Both happen before watching, so only the measurement is watched.
    static_sizes(SMALL, (1, 28, 28))
    measure_static(SMALL, build_model(SMALL), (1, 28, 28), MeasureConfig(latency_min_time=0.01))
    work, scratch = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(work)
    for variable in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.setenv(variable, str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    torch.manual_seed(0)
    model = inference_model(build_model(MobileNetArch(1, (28, 28), 10, 8, (BlockArch(16, 3, 2, "linear"),
                                                                            BlockArch(16, 5, 1, "separable")))))
    example = torch.randn(2, 1, 28, 28)
    (got,) = onnx_call(model, example, threads=1)()
    with torch.inference_mode():
        expected = model(example).numpy()
    assert np.abs(got - expected).max() < 1e-4
    static = measure_static(SMALL, build_model(SMALL), (1, 28, 28), MeasureConfig(latency_min_time=0.01))
    assert static.latency_ms > 0
    assert list(work.iterdir()) == [] and list(scratch.iterdir()) == []


def test_a_module_the_exporter_cannot_express_is_an_impossible_arch():
    class Eigen(nn.Module):
        def forward(self, x):
            return torch.linalg.eigh(x @ x.transpose(-1, -2))[0]

    with pytest.raises(ArchError, match="the ONNX exporter cannot express this arch: "):
        export_onnx_bytes(Eigen(), torch.zeros(1, 4, 4))


# -- in a study: memory objective, runtime recorded, latency measured once per arch ---------------

def test_a_repeated_arch_reuses_its_latency_and_memory_is_an_objective(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = {"family": "mixer", "layers": 1, "channels": 8, "token_hidden": 16, "channel_hidden": 16,
             "patch_size": 7, "dilation": 1}
    data = merge(TINY_SPEC, {"study": {"trials": 2, "sampler": "grid"}, "objectives": ["accuracy", "memory"],
                             "train": {"epochs": 1, "lr": [0.01, 0.02]}, "space": space,
                             "data": {"train_size": 100, "val_size": 50, "test_size": 50},
                             "measure": {"latency": "always"}})  # timed, though not an objective
    data["space"] = space
    spec = parse_spec(data, "repeat.yaml")
    summary = run_study(spec, storage_url=f"sqlite:///{tmp_path / 's.db'}", artifacts=str(tmp_path / "art"))
    first, second = summary.study.get_trials()
    assert first.params["train.lr"] != second.params["train.lr"]  # another recipe: not a duplicate
    assert "duplicate_of" not in second.user_attrs
    assert second.user_attrs["latency_from"] == first.number and first.user_attrs["latency_from"] is None
    assert second.user_attrs["latency_ms"] == first.user_attrs["latency_ms"]
    expected = static_sizes(MixerArch(1, (28, 28), 10, 1, 8, 16, 16, 7), (1, 28, 28)).memory.peak_bytes
    assert first.values[1] == second.values[1] == first.user_attrs["memory_bytes"] == expected
    import onnxruntime
    assert summary.study.user_attrs["latency_runtime"] == f"onnxruntime {onnxruntime.__version__}"
    assert 0 < summary.study.user_attrs["latency_reference_ms"] < 10  # the figure every ratio is converted with


class WarningsSeen(Reporter):
    def __init__(self):
        self.warnings: list[str] = []

    def warning(self, text):
        self.warnings.append(text)


def test_the_study_records_its_latency_machine_and_a_worker_on_another_machine_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = merge(TINY_SPEC, {"study": {"trials": 1}, "objectives": ["accuracy", "latency"],
                             "measure": {"latency_min_time": 0.01}})
    spec, url = parse_spec(data, "m.yaml"), f"sqlite:///{tmp_path / 's.db'}"
    here = machine_description()
    assert f", {platform.machine()}, {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} CPUs" in here
    seen = WarningsSeen()
    study = run_study(spec, storage_url=url, artifacts=str(tmp_path / "art"), reporter=seen).study
    assert study.user_attrs["latency_machine"] == here and seen.warnings == []
    (first,) = study.get_trials()
    assert "latency_machine" not in first.user_attrs
    assert latency_provenance(study) == f"latency: {study.user_attrs['latency_runtime']} on {here}"
    assert export_record(study, first, spec, url)["latency_measured"] == {
        "runtime": study.user_attrs["latency_runtime"], "machine": here}

    # The study as if a machine of another kind had created it: this one now joins it.
    other = "Some RISC-V part, riscv64, DEFAULT, 64 CPUs"
    study.set_user_attr("latency_machine", other)
    study = run_study(spec, storage_url=url, trials=2, artifacts=str(tmp_path / "art"), reporter=seen).study
    assert seen.warnings == [f"this machine ({here}) is not the one that timed the study's latencies ({other}): "
                             "the latencies it times are stored with latency_machine on their trials and compare "
                             "with the others' only roughly"]
    first, second = study.get_trials()
    assert second.user_attrs["latency_machine"] == here and "latency_machine" not in first.user_attrs
    assert latency_provenance(study) == (f"latency: {study.user_attrs['latency_runtime']} on {other}; "
                                         "timed on another machine (latency_machine): trial 1")
    assert export_record(study, first, spec, url)["latency_measured"]["machine"] == other
    assert export_record(study, second, spec, url)["latency_measured"]["machine"] == here


def test_the_run_display_shows_a_warning_on_its_own_line():
    from rich.console import Console
    from rich.progress import Progress

    from mixsearch.cli.run import RichReporter

    output = io.StringIO()
    with Progress(console=Console(file=output, width=200, color_system=None)) as progress:
        RichReporter(progress, progress.add_task("trials"), ["accuracy"]).warning("latencies [of] another machine")
    assert "warning: latencies [of] another machine\n" in output.getvalue()


def test_a_memory_constraint_marks_the_trial_infeasible(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = merge(TINY_SPEC, {"study": {"trials": 1}, "constraints": {"memory": 1000},
                             "measure": {"runtime": "torch", "latency": "always", "latency_min_time": 0.01}})
    summary = run_study(parse_spec(data, "c.yaml"), storage_url=f"sqlite:///{tmp_path / 's.db'}",
                        artifacts=str(tmp_path / "art"))
    (trial,) = summary.study.get_trials()
    assert trial.user_attrs["infeasible_reason"].startswith("memory ")
    assert trial.user_attrs["epochs_run"] == 0 and trial.user_attrs["memory_bytes"] > 1000
    assert summary.study.user_attrs["latency_runtime"] == f"torch {torch.__version__}"


def test_warm_up_leaves_one_counted_arch_as_a_count_of_it_would(monkeypatch):
    from mixsearch.measure import sizes

    monkeypatch.setattr(sizes, "_counted", type(sizes._counted)())
    sizes.warm_up()
    assert len(sizes._counted) == 1
    (arch_key, shape, batch), counted = next(iter(sizes._counted.items()))
    assert (shape, batch) == ((1, 28, 28), 1)
    arch = MixerArch(in_channels=1, image_size=(28, 28), num_classes=10, layers=1, channels=8, token_hidden=8,
                     channel_hidden=8, patch_size=7)
    assert counted.params == sum(p.numel() for p in build_model(arch).parameters())
    assert static_sizes(arch, (1, 28, 28)) is counted  # the first trial of that arch counts nothing again
