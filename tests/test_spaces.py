"""The shipped spec files, the MobileNet space's fusion strategies, raft token mixing in real studies."""

from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TINY_SPEC, cli_env
from optuna.trial import TrialState

from mixsearch.arch import arch_from_dict
from mixsearch.cli import main
from mixsearch.measure import count_flops, count_params
from mixsearch.models import build_model, inference_model
from mixsearch.space import CornerTrial
from mixsearch.spec import parse_spec
from mixsearch.study import run_study

SPACES = sorted(Path(__file__).resolve().parents[1].joinpath("spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_specs_validate(path, capsys):
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "is valid" in out
    # every shipped spec searches latency or, for its reproduction tables, asks for it
    assert "latency: timed in onnxruntime for every trial" in out


def test_validate_says_when_latency_is_not_timed(tmp_path, capsys):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_SPEC))
    assert main(["validate", str(tmp_path / "tiny.yaml")]) == 0
    assert ("latency: not timed: not an objective or constraint (measure.latency: always)"
            in capsys.readouterr().out)


def test_the_command_freezes_its_objects_before_the_interpreter_shuts_down(tmp_path):
    """The shutdown's garbage collections would walk every object torch made (most of a second);
    frozen, they skip them. The command's output and exit code are unchanged."""
    import subprocess
    import sys

    probe = ("import atexit, gc, sys\n"
             "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 10_000))\n"
             f"sys.argv = ['mixsearch', 'validate', {str(SPACES[0])!r}]\n"
             "from mixsearch.cli import entry\n"
             "entry()\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=cli_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout
    assert result.stdout.endswith("frozen at exit: True\n")


def mobilenet_space(fusion, **fields):
    return parse_spec({"space": {"family": "mobilenet", "blocks": 4, "width": 8, "strides": "1,2,1,2",
                                 "fusion": fusion, **fields}}, "m.yaml").space


def modes(space, overrides=None, side=0):
    arch = space.sample(CornerTrial(side, overrides or {}), (1, 28, 28), 10)
    return [b.mode for b in arch.blocks]


def test_uniform_fusion_fixes_one_mode_for_all_blocks():
    space = mobilenet_space({"strategy": "uniform", "mode": ["separable", "linear", "fused"]})
    assert modes(space) == ["separable"] * 4
    assert modes(space, {"fusion.mode": "linear"}) == ["linear"] * 4


def test_per_block_fusion_chooses_each_block():
    space = mobilenet_space({"strategy": "per_block", "mode": ["separable", "fused"]})
    assert modes(space, {"block1.mode": "fused", "block3.mode": "fused"}) == ["separable", "fused", "separable", "fused"]


def test_first_k_fuses_the_early_blocks():
    space = mobilenet_space({"strategy": "first_k", "mode": ["separable", "linear"], "first_k": {"low": 0, "high": 3}})
    assert modes(space, {"fusion.first_k": 2}) == ["fused", "fused", "separable", "separable"]
    assert modes(space, {"fusion.first_k": 3, "block3.mode": "linear"}) == ["fused", "fused", "fused", "linear"]
    assert modes(space, {"fusion.first_k": 0}) == ["separable"] * 4


def test_stride_pattern_shorter_than_blocks_is_impossible():
    from mixsearch.errors import ArchError

    space = mobilenet_space({"strategy": "uniform"}, blocks=6)
    with pytest.raises(ArchError, match="stride pattern '1,2,1,2' has 4 entries for 6 blocks"):
        space.sample(CornerTrial(0), (1, 28, 28), 10)


def tiny(space, name, **data):
    return parse_spec({
        "study": {"name": name, "trials": 4, "seed": 1, "sampler": "random", "pruner": "none"},
        "data": {"dataset": "synthetic", "image_shape": [1, 16, 16], "num_classes": 4,
                 "train_size": 256, "val_size": 64, "test_size": 64, **data},
        "train": {"epochs": 1, "batch_size": 64},
        "objectives": ["accuracy", "params", "flops"],
        "measure": {"latency_min_time": 0.01},
        "space": space,
    }, f"{name}.yaml")


def check_static_attrs(trial):
    arch = arch_from_dict(trial.user_attrs["arch"])
    model = build_model(arch)
    inference = inference_model(model)
    assert trial.user_attrs["params"] == count_params(model) == trial.values[1]
    assert trial.user_attrs["inference_params"] == count_params(inference)
    assert trial.user_attrs["inference_flops"] == count_flops(inference, (1, 16, 16))
    assert trial.user_attrs["flops"] == trial.values[2]
    return arch


def test_mobilenet_study_completes(tmp_path):
    spec = tiny({"family": "mobilenet", "blocks": [2, 3], "width": [4, 8], "strides": "1,2,1",
                 "kernel_size": [3, 5], "fusion": {"strategy": "per_block", "mode": ["separable", "linear", "fused"]}},
                "mobile")
    url = f"sqlite:///{tmp_path / 'm.db'}"
    run_study(spec, storage_url=url)
    trials = optuna.load_study(study_name="mobile", storage=url).get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4
    for trial in trials:
        if "duplicate_of" not in trial.user_attrs:
            assert check_static_attrs(trial).family == "mobilenet"


def test_raft_study_prunes_impossible_archs_and_trains_the_rest(tmp_path):
    # 16x16 image, patch 4 -> 4x4 grid (square); channels 6 with raft_size 4 is impossible.
    spec = tiny({"family": "mixer", "layers": 2, "channels": [6, 8], "token_hidden": 8, "channel_hidden": 8,
                 "patch_size": 4, "token_mixing": "raft", "raft_size": [2, 4],
                 "sharing": {"sites": ["token.vertical"], "mode": ["none", "all"]}}, "raft")
    url = f"sqlite:///{tmp_path / 'r.db'}"
    run_study(spec, storage_url=url, trials=8)
    trials = optuna.load_study(study_name="raft", storage=url).get_trials()
    impossible = [t for t in trials if t.state == TrialState.PRUNED]
    trained = [t for t in trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert trained
    for trial in impossible:
        assert trial.params["channels"] == 6 and trial.params["raft_size"] == 4
        assert trial.user_attrs["pruned_reason"] == "impossible arch: raft_size 4 must divide channels 6"
    for trial in trained:
        arch = check_static_attrs(trial)
        assert arch.token_mixing == "raft" and "token.vertical.fc1" in arch.sharing
