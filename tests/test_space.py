"""Search-space files: parsing, validation messages, sampling, and fidelity to the seed table."""

from __future__ import annotations

import textwrap

import optuna
import pytest

from tuner.errors import SpaceError
from tuner.space._space import load_space, parse_space, shipped_spaces

optuna.logging.set_verbosity(optuna.logging.WARNING)


def parse(body: str):
    return parse_space(textwrap.dedent(body), source="t.yaml", name="t")


GOOD = [
    ("float", "params:\n  lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n",
     {"lr": ("FloatDistribution", {"low": 1e-5, "high": 1e-3, "log": True, "step": None})}),
    ("int with step", "params:\n  n: {type: int, low: 0, high: 30, step: 5}\n",
     {"n": ("IntDistribution", {"low": 0, "high": 30, "log": False, "step": 5})}),
    ("categorical", "params:\n  opt: {type: categorical, choices: [adam, sgd]}\n",
     {"opt": ("CategoricalDistribution", {"choices": ["adam", "sgd"]})}),
    ("fixed is a one-choice categorical", "params:\n  p: {type: fixed, value: 5}\n",
     {"p": ("CategoricalDistribution", {"choices": [5]})}),
    ("low equals high", "params:\n  x: {type: float, low: 0.5, high: 0.5}\n",
     {"x": ("FloatDistribution", {"low": 0.5, "high": 0.5, "log": False, "step": None})}),
]


@pytest.mark.parametrize("label,body,expected", GOOD, ids=[g[0] for g in GOOD])
def test_good_snippets_parse_to_optuna_distributions(label, body, expected):
    shown = parse(body).to_json()["params"]
    for name, (dist_name, attributes) in expected.items():
        assert shown[name] == [{"distribution": {"name": dist_name, "attributes": attributes}, "when": None}]


BAD = [
    ("broken yaml", "params: {lr: [1, 2\n",
     "t.yaml: invalid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'"),
    ("not a mapping", "- 1\n- 2\n", "t.yaml: must be a mapping with a 'params' key, got list"),
    ("no params", "settings: {model: resnet18}\n",
     "t.yaml: params must be a non-empty mapping of parameter names to entries"),
    ("unknown top-level key", "parms: {}\nparams: {x: {type: fixed, value: 1}}\n",
     "t.yaml: top level: unknown key 'parms' (allowed: description, params, settings)"),
    ("unknown param key", "params:\n  lr: {type: float, low: 0.1, high: 1, lg: true}\n",
     "t.yaml: lr (float): unknown key 'lg' (allowed: high, log, low, prior, step, type, when)"),
    ("choices on a float", "params:\n  lr: {type: float, low: 0.1, high: 1, choices: [1]}\n",
     "t.yaml: lr (float): unknown key 'choices' (allowed: high, log, low, prior, step, type, when)"),
    ("unknown type", "params:\n  lr: {type: double, low: 0.1, high: 1}\n",
     "t.yaml: lr.type must be one of float, int, categorical, fixed, got 'double'"),
    ("missing type", "params:\n  lr: {low: 0.1, high: 1}\n",
     "t.yaml: lr.type must be one of float, int, categorical, fixed, got null"),
    ("low > high", "params:\n  lr: {type: float, low: 0.1, high: 0.01}\n",
     "t.yaml: lr.low must be <= high (0.01), got 0.1"),
    ("log with low 0", "params:\n  lr: {type: float, low: 0, high: 1.0e-3, log: true}\n",
     "t.yaml: lr.low must be > 0 when log is true, got 0"),
    ("log with negative low", "params:\n  lr: {type: float, low: -1, high: 1, log: true}\n",
     "t.yaml: lr.low must be > 0 when log is true, got -1"),
    ("missing high", "params:\n  lr: {type: float, low: 0.1}\n",
     "t.yaml: lr.high is required for a float parameter"),
    ("string bound", "params:\n  lr: {type: float, low: small, high: 1}\n",
     "t.yaml: lr.low must be a number, got 'small'"),
    ("float bound on int", "params:\n  n: {type: int, low: 1.5, high: 4}\n",
     "t.yaml: n.low must be an integer, got 1.5"),
    ("log not bool", "params:\n  lr: {type: float, low: 0.1, high: 1, log: yes please}\n",
     "t.yaml: lr.log must be true or false, got 'yes please'"),
    ("zero step", "params:\n  n: {type: int, low: 1, high: 4, step: 0}\n",
     "t.yaml: n.step must be an integer > 0, got 0"),
    ("step with log", "params:\n  lr: {type: float, low: 0.1, high: 1, log: true, step: 0.1}\n",
     "t.yaml: lr.step cannot be combined with log: true, got step 0.1"),
    ("empty choices", "params:\n  opt: {type: categorical, choices: []}\n",
     "t.yaml: opt.choices must not be empty, got []"),
    ("choices not a list", "params:\n  opt: {type: categorical, choices: adam}\n",
     "t.yaml: opt.choices must be a list, got 'adam'"),
    ("repeated choice", "params:\n  opt: {type: categorical, choices: [adam, adam]}\n",
     "t.yaml: opt.choices must not repeat a value, got ['adam', 'adam']"),
    ("nested choice", "params:\n  opt: {type: categorical, choices: [[1, 2]]}\n",
     "t.yaml: opt.choices must hold numbers, strings, booleans or null, got [1, 2]"),
    ("fixed without value", "params:\n  p: {type: fixed}\n",
     "t.yaml: p.value is required for a fixed parameter"),
    ("when names unknown param",
     "params:\n  m: {type: float, low: 0.8, high: 0.99, when: {optimiser: sgd}}\n",
     "t.yaml: m.when names unknown parameter 'optimiser' (known: m, task)"),
    ("when names unknown value",
     "params:\n  opt: {type: categorical, choices: [adam, sgd]}\n"
     "  m: {type: float, low: 0.8, high: 0.99, when: {opt: sgdm}}\n",
     "t.yaml: m.when.opt: 'sgdm' is not a possible value of opt (possible: ['adam', 'sgd'])"),
    ("when value of the wrong type",
     "params:\n  b: {type: categorical, choices: [16, 32]}\n"
     "  m: {type: float, low: 0.8, high: 0.99, when: {b: '16'}}\n",
     "t.yaml: m.when.b: '16' is not a possible value of b (possible: [16, 32])"),
    ("when tests a float",
     "params:\n  lr: {type: float, low: 0.1, high: 1}\n"
     "  m: {type: float, low: 0.8, high: 0.99, when: {lr: 0.5}}\n",
     "t.yaml: m.when.lr: can only test a categorical or fixed parameter"),
    ("when on unknown context value",
     "params:\n  loss: {type: fixed, value: ce, when: {task: regression}}\n",
     "t.yaml: loss.when.task: 'regression' is not a possible value of task "
     "(possible: ['single_label', 'multi_label'])"),
    ("overlapping branches",
     "params:\n  f: {type: categorical, choices: [a, b]}\n"
     "  lr:\n    - {type: float, low: 0.1, high: 1, when: {f: [a, b]}}\n"
     "    - {type: float, low: 0.01, high: 0.1, when: {f: b}}\n",
     "t.yaml: lr[0] and lr[1] can both apply; give them 'when' conditions on the same "
     "parameter with different values"),
    ("branch error names the branch",
     "params:\n  f: {type: categorical, choices: [a, b]}\n"
     "  lr:\n    - {type: float, low: 0.1, high: 1, when: {f: a}}\n"
     "    - {type: float, low: 0, high: 0.1, log: true, when: {f: b}}\n",
     "t.yaml: lr[1].low must be > 0 when log is true, got 0"),
    ("branches of different types",
     "params:\n  f: {type: categorical, choices: [a, b]}\n"
     "  n:\n    - {type: float, low: 0.1, high: 1, when: {f: a}}\n"
     "    - {type: int, low: 1, high: 3, when: {f: b}}\n",
     "t.yaml: n: every sampled branch must have the same type, got float and int"),
    ("cycle",
     "params:\n  a: {type: categorical, choices: [x, y], when: {b: x}}\n"
     "  b: {type: categorical, choices: [x, y], when: {a: x}}\n",
     "t.yaml: 'when' conditions form a cycle: a -> b -> a"),
    ("reserved name", "params:\n  task: {type: fixed, value: x}\n",
     "t.yaml: task: the name is reserved for a value that comes from the data"),
    ("unknown setting", "settings: {modle: resnet18}\nparams: {x: {type: fixed, value: 1}}\n",
     "t.yaml: settings: unknown key 'modle' (allowed: image_size, max_epochs, model, weights)"),
    ("bad image size", "settings: {image_size: 4}\nparams: {x: {type: fixed, value: 1}}\n",
     "t.yaml: settings.image_size must be an integer >= 8, got 4"),
    ("bad max epochs", "settings: {max_epochs: 0}\nparams: {x: {type: fixed, value: 1}}\n",
     "t.yaml: settings.max_epochs must be an integer >= 1, got 0"),
    ("bad weights", "settings: {weights: 3}\nparams: {x: {type: fixed, value: 1}}\n",
     "t.yaml: settings.weights must be imagenet, none or a file path, got 3"),
]


@pytest.mark.parametrize("label,body,message", BAD, ids=[b[0] for b in BAD])
def test_bad_snippets_give_one_exact_message(label, body, message):
    with pytest.raises(SpaceError) as info:
        parse_space(body, source="t.yaml", name="t")
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_sampling_follows_conditions_and_never_suggests_inactive_params():
    loaded = parse(
        """
        params:
          optimizer: {type: categorical, choices: [adam, sgd]}
          momentum: {type: float, low: 0.8, high: 0.99, when: {optimizer: sgd}}
          patience: {type: fixed, value: 5}
        """
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        params = loaded.sample(trial, {"task": "single_label"})
        study.tell(trial, 0.0)
        seen.add(params["optimizer"])
        assert ("momentum" in trial.params) == (params["optimizer"] == "sgd")
        assert "patience" not in trial.params  # fixed values are never suggested
        assert params["patience"] == 5
    assert seen == {"adam", "sgd"}


def test_sampling_order_puts_conditions_first_whatever_the_file_order():
    loaded = parse(
        """
        params:
          momentum: {type: float, low: 0.8, high: 0.99, when: {optimizer: sgd}}
          optimizer: {type: fixed, value: sgd}
        """
    )
    assert list(loaded.params) == ["optimizer", "momentum"]
    trial = optuna.create_study().ask()
    assert set(loaded.sample(trial, {})) == {"optimizer", "momentum"}


def _branch_in_range(branch, value) -> bool:
    if branch.type in ("float", "int"):
        ok = branch.low <= value <= branch.high
        if branch.step is not None:
            ok = ok and abs(((value - branch.low) / branch.step) - round((value - branch.low) / branch.step)) < 1e-9
        return ok and (branch.type != "int" or isinstance(value, int))
    return value in branch.possible_values()


@pytest.mark.parametrize("path", shipped_spaces(), ids=lambda p: p.stem)
@pytest.mark.parametrize("task", ["single_label", "multi_label"])
def test_shipped_spaces_sample_in_range_with_conditions_holding(path, task):
    loaded = load_space(str(path))
    # TPE (multivariate, grouped, as the service uses it) after random start-up trials. Each TPE
    # ask costs time in the number of trials so far: 60 TPE trials after the 20 random ones.
    sampler = optuna.samplers.TPESampler(seed=0, multivariate=True, group=True, n_startup_trials=20)
    study = optuna.create_study(sampler=sampler)
    for number in range(80):
        trial = study.ask()
        params = loaded.sample(trial, {"task": task})
        for name, branches in loaded.params.items():
            context = {**params, "task": task}
            active = [b for b in branches if b.applies(context)]
            assert len(active) <= 1
            if active:
                assert _branch_in_range(active[0], params[name]), (name, params[name])
            else:
                assert name not in params and name not in trial.params
        study.tell(trial, (number * 7919) % 101 / 100.0)


def test_default_covers_every_row_of_the_seed_table_at_its_ranges():
    loaded = load_space("default")
    p = loaded.params

    def envelope(name):
        return min(b.low for b in p[name]), max(b.high for b in p[name])

    def choices(name):
        return {v for b in p[name] for v in b.possible_values()}

    def branch_for(name, **when):
        return next(b for b in p[name] if b.applies(when))

    # Learning rate 1e-3 -> 1e-6, on a log scale, conditioned on the freeze strategy.
    assert min(envelope("lr")[0], envelope("backbone_lr")[0]) == 1e-6
    assert max(envelope("lr")[1], envelope("backbone_lr")[1]) == 1e-3
    assert all(b.log for b in p["lr"] + p["backbone_lr"])
    head = branch_for("lr", freeze="head")
    assert (head.low, head.high) == (1e-4, 1e-3)
    full_backbone = branch_for("backbone_lr", freeze="full")
    assert (full_backbone.low, full_backbone.high) == (1e-6, 1e-5)
    assert not any(b.applies({"freeze": "head"}) for b in p["backbone_lr"])  # differential LR
    # Optimizer Adam / AdamW / SGD + momentum, momentum only for SGD.
    assert choices("optimizer") == {"adam", "adamw", "sgd"}
    assert [dict(b.when) for b in p["momentum"]] == [{"optimizer": ("sgd",)}]
    assert p["momentum"][0].low <= 0.9 <= p["momentum"][0].high
    # Weight decay 1e-4 -> 1e-6, batch size 16 -> 64, epochs 5 -> 50.
    assert envelope("weight_decay") == (1e-6, 1e-4) and p["weight_decay"][0].log
    assert choices("batch_size") == {16, 32, 64}
    assert envelope("epochs") == (5, 50)
    assert (branch_for("epochs", freeze="head").low, branch_for("epochs", freeze="head").high) == (5, 20)
    assert (branch_for("epochs", freeze="full").low, branch_for("epochs", freeze="full").high) == (20, 50)
    # Layers to freeze/unfreeze.
    assert choices("freeze") == {"head", "last_blocks", "full"}
    # Dropout 0.3 -> 0.5.
    assert envelope("dropout") == (0.3, 0.5)
    # Transform parameters.
    assert {"aug_crop_scale", "aug_hflip", "aug_rotation", "aug_color_jitter"} <= set(p)
    # LR schedule StepLR / ReduceLROnPlateau (factor 0.1, patience 3) / Cosine.
    assert choices("scheduler") == {"step", "plateau", "cosine"}
    # Searched around the seed's values, which are their priors' centres (tests/test_priors.py).
    assert branch_for("plateau_factor", scheduler="plateau").contains(0.1)
    assert branch_for("plateau_patience", scheduler="plateau").contains(3)
    # Loss: cross-entropy with smoothing and class weights; BCE for multi-label data.
    assert branch_for("loss", task="single_label").value == "cross_entropy"
    assert branch_for("loss", task="multi_label").value == "bce_with_logits"
    assert {"label_smoothing", "class_weighting"} <= set(p)
    # Early stopping patience 5.
    assert p["patience"][0].value == 5
