"""Expert priors: parsing and validation in space files, and the prior-guided sampler on real studies."""

from __future__ import annotations

import math
import statistics

import optuna
import pytest

from tuner.errors import SpaceError
from tuner.search._priors import PriorGuidedSampler, prior_weight
from tuner.cli._render import space_table
from tuner.space._space import load_space, parse_space
from tuner.config import StudyConfig
from tuner.search._note import study_note
from tuner.search._samplers import make_pruner, make_sampler
from tuner.search._study import study_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sampler_for(config: StudyConfig, seed: int):
    """The study's sampler, its space parsed from the config's text as a study opens it."""
    return make_sampler(config, study_space(config), seed)


def pruner_for(config: StudyConfig):
    return make_pruner(config, study_space(config))


def parse(body: str):
    return parse_space(body, source="t.yaml", name="t")


GOOD = [
    ("log float", "params:\n  lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true,"
                  " prior: {centre: 1.0e-3, spread: 0.5}}\n",
     "lr", {"centre": 1e-3, "spread": 0.5}),
    ("int", "params:\n  n: {type: int, low: 1, high: 5, prior: {centre: 3, spread: 1}}\n",
     "n", {"centre": 3, "spread": 1}),
    ("centre at the range's end", "params:\n  x: {type: float, low: 0.0, high: 1.0, prior: {centre: 1.0, spread: 0.1}}\n",
     "x", {"centre": 1.0, "spread": 0.1}),
    ("categorical", "params:\n  opt: {type: categorical, choices: [adam, adamw, sgd], prior: {weights: [1, 2, 0]}}\n",
     "opt", {"weights": [1.0, 2.0, 0.0]}),
]


@pytest.mark.parametrize("label,body,name,prior", GOOD, ids=[g[0] for g in GOOD])
def test_good_priors_parse_and_show_in_the_json(label, body, name, prior):
    (shown,) = parse(body).to_json()["params"][name]
    assert shown["prior"] == prior


def test_a_branch_without_prior_shows_none():
    (shown,) = parse("params:\n  x: {type: float, low: 0.0, high: 1.0}\n").to_json()["params"]["x"]
    assert "prior" not in shown
    assert not parse("params:\n  x: {type: float, low: 0.0, high: 1.0}\n").has_priors


BAD = [
    ("centre above the range",
     "params:\n  lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true, prior: {centre: 1.0e-2, spread: 0.5}}\n",
     "t.yaml: lr.prior.centre must lie in the range 1e-05 .. 0.001, got 0.01"),
    ("centre below the range of an int",
     "params:\n  n: {type: int, low: 1, high: 5, prior: {centre: 0, spread: 1}}\n",
     "t.yaml: n.prior.centre must lie in the range 1 .. 5, got 0"),
    ("zero spread",
     "params:\n  x: {type: float, low: 0.0, high: 1.0, prior: {centre: 0.5, spread: 0}}\n",
     "t.yaml: x.prior.spread must be > 0, got 0"),
    ("negative spread in decades",
     "params:\n  lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true, prior: {centre: 1.0e-4, spread: -1}}\n",
     "t.yaml: lr.prior.spread must be > 0 (in decades, as log is true), got -1"),
    ("spread as text",
     "params:\n  x: {type: float, low: 0.0, high: 1.0, prior: {centre: 0.5, spread: wide}}\n",
     "t.yaml: x.prior.spread must be a number, got 'wide'"),
    ("centre missing",
     "params:\n  x: {type: float, low: 0.0, high: 1.0, prior: {spread: 0.1}}\n",
     "t.yaml: x.prior.centre is required"),
    ("centre spelled center",
     "params:\n  x: {type: float, low: 0.0, high: 1.0, prior: {center: 0.5, spread: 0.1}}\n",
     "t.yaml: x.prior: unknown key 'center' (allowed: centre, spread)"),
    ("prior not a mapping",
     "params:\n  x: {type: float, low: 0.0, high: 1.0, prior: 0.5}\n",
     "t.yaml: x.prior must be a mapping with centre and spread, got 0.5"),
    ("negative weight",
     "params:\n  opt: {type: categorical, choices: [adam, sgd], prior: {weights: [1, -0.5]}}\n",
     "t.yaml: opt.prior.weights must be numbers >= 0, got -0.5 in [1, -0.5]"),
    ("all weights zero",
     "params:\n  opt: {type: categorical, choices: [adam, sgd], prior: {weights: [0, 0]}}\n",
     "t.yaml: opt.prior.weights must not all be 0, got [0, 0]"),
    ("one weight short",
     "params:\n  opt: {type: categorical, choices: [adam, adamw, sgd], prior: {weights: [1, 2]}}\n",
     "t.yaml: opt.prior.weights must be a list of one weight per choice (3), got [1, 2]"),
    ("weights as a mapping",
     "params:\n  opt: {type: categorical, choices: [adam, sgd], prior: {weights: {adam: 1}}}\n",
     "t.yaml: opt.prior.weights must be a list of one weight per choice (2), got {'adam': 1}"),
    ("weight as text",
     "params:\n  opt: {type: categorical, choices: [adam, sgd], prior: {weights: [1, lots]}}\n",
     "t.yaml: opt.prior.weights must be numbers >= 0, got 'lots' in [1, 'lots']"),
    ("centre for a categorical",
     "params:\n  opt: {type: categorical, choices: [adam, sgd], prior: {centre: 1, spread: 1}}\n",
     "t.yaml: opt.prior: unknown key 'centre' (allowed: weights)"),
    ("prior on a fixed value",
     "params:\n  p: {type: fixed, value: 5, prior: {centre: 5, spread: 1}}\n",
     "t.yaml: p (fixed): unknown key 'prior' (allowed: type, value, when)"),
    ("branch error names the branch",
     "params:\n  f: {type: categorical, choices: [a, b]}\n"
     "  lr:\n    - {type: float, low: 0.1, high: 1, when: {f: a}}\n"
     "    - {type: float, low: 0.01, high: 0.1, when: {f: b}, prior: {centre: 0.5, spread: 0.1}}\n",
     "t.yaml: lr[1].prior.centre must lie in the range 0.01 .. 0.1, got 0.5"),
]


@pytest.mark.parametrize("label,body,message", BAD, ids=[b[0] for b in BAD])
def test_bad_priors_give_one_exact_message(label, body, message):
    with pytest.raises(SpaceError) as info:
        parse(body)
    assert str(info.value) == message


# --- the sampler on real in-memory studies ------------------------------------------------

PRIOR_SPACE = """\
params:
  lr: {type: float, low: 1.0e-6, high: 1.0e-1, log: true, prior: {centre: 1.0e-3, spread: 0.25}}
  dropout: {type: float, low: 0.0, high: 0.9, prior: {centre: 0.4, spread: 0.05}}
  patience: {type: int, low: 1, high: 9, prior: {centre: 3, spread: 0.5}}
  optimizer: {type: categorical, choices: [adam, adamw, sgd], prior: {weights: [0, 1, 0]}}
  momentum: {type: float, low: 0.5, high: 0.99, when: {optimizer: sgd}, prior: {centre: 0.9, spread: 0.01}}
  weight_decay: {type: float, low: 0.0, high: 1.0}
"""


def sampled(space, sampler, n_trials: int) -> list[dict]:
    """Ask/tell n_trials on a real in-memory study; the objective value is arbitrary but fixed."""
    study = optuna.create_study(sampler=sampler)
    out = []
    for number in range(n_trials):
        trial = study.ask()
        out.append(space.sample(trial, {"task": "single_label"}))
        study.tell(trial, (number * 7919) % 101 / 100.0)
    return out


def test_prior_trials_follow_the_centre_and_spread():
    space = parse(PRIOR_SPACE)
    # beta huge: every trial follows the prior (chance beta/(beta+n) is 1 - 1e-7 at most).
    rows = sampled(space, PriorGuidedSampler(space, optuna.samplers.RandomSampler(seed=0), beta=1e9, seed=0), 300)
    decades = [math.log10(r["lr"]) for r in rows]
    # Uniform on the log range would give a mean of -3.5 and a standard deviation of 1.44 decades.
    assert abs(statistics.mean(decades) - (-3)) < 0.1
    assert 0.18 < statistics.stdev(decades) < 0.32
    dropouts = [r["dropout"] for r in rows]
    assert abs(statistics.mean(dropouts) - 0.4) < 0.02 and 0.035 < statistics.stdev(dropouts) < 0.065
    assert all(1.0e-6 <= r["lr"] <= 1.0e-1 and 0.0 <= r["dropout"] <= 0.9 for r in rows)
    patience = [r["patience"] for r in rows]
    assert all(isinstance(p, int) for p in patience) and set(patience) <= {2, 3, 4}
    assert patience.count(3) > 150  # N(3, 0.5) rounds to 3 in 68% of draws
    assert {r["optimizer"] for r in rows} == {"adamw"}  # weight 0 is never drawn
    # A parameter without a prior is drawn uniformly in a prior trial.
    decays = [r["weight_decay"] for r in rows]
    assert 0.4 < statistics.mean(decays) < 0.6 and min(decays) < 0.05 and max(decays) > 0.95


def test_the_prior_fades_as_trials_accumulate():
    space = parse(PRIOR_SPACE)
    sampler = PriorGuidedSampler(space, optuna.samplers.RandomSampler(seed=1), beta=20, seed=1)
    rows = sampled(space, sampler, 800)

    def near_centre(window):
        return sum(abs(math.log10(r["lr"]) + 3) < 0.5 for r in window) / len(window)

    # Share within half a decade of the centre: ~0.95 from the prior, 0.2 from uniform draws.
    # Trials 0-39 follow the prior with chance ~0.55 on average: expected ~0.61 (sd 0.08).
    # Trials 700-799, chance ~0.027: expected ~0.22 (sd 0.04). Both bounds are over 2.5 sd away.
    early, late = near_centre(rows[:40]), near_centre(rows[700:])
    assert early > 0.4
    assert late < 0.35
    assert sum(r["optimizer"] == "adamw" for r in rows[:40]) > 20  # the prior's only choice; uniform: ~13
    assert sum(r["optimizer"] == "adamw" for r in rows[700:]) < 45  # uniform gives ~34 of 100


def test_the_schedule_is_beta_over_beta_plus_n_and_deterministic():
    assert prior_weight(0, 10) == 1.0
    assert prior_weight(10, 10) == 0.5
    assert prior_weight(30, 10) == 0.25
    assert prior_weight(0, 0) == 0.0
    space = parse(PRIOR_SPACE)
    first = PriorGuidedSampler(space, optuna.samplers.RandomSampler(), beta=10, seed=3)
    second = PriorGuidedSampler(space, optuna.samplers.RandomSampler(), beta=10, seed=3)
    # Two workers' samplers agree on which trials follow the prior.
    follows = [first.follows_prior(n) for n in range(200)]
    assert follows == [second.follows_prior(n) for n in range(200)]
    # Trials 100-199 follow it with chance 10/(10+n), ~0.065 on average: ~6.5 of 100 expected.
    assert follows[0] and 1 <= sum(follows[100:]) <= 15 and sum(follows[:10]) >= 3


def test_prior_trials_with_tpe_and_conditional_branches_stay_in_range():
    # The service's TPE set-up (multivariate, grouped, constant liar) inside the prior sampler,
    # on a conditional space: momentum only for sgd, its prior used when sgd is drawn.
    body = PRIOR_SPACE.replace("weights: [0, 1, 0]", "weights: [0, 0, 1]")
    space = parse(body)
    base = optuna.samplers.TPESampler(seed=0, multivariate=True, group=True, constant_liar=True,
                                      n_startup_trials=5)
    rows = sampled(space, PriorGuidedSampler(space, base, beta=1e9, seed=0), 40)
    assert {r["optimizer"] for r in rows} == {"sgd"}
    momenta = [r["momentum"] for r in rows]
    assert all(0.5 <= m <= 0.99 for m in momenta)
    assert abs(statistics.mean(momenta) - 0.9) < 0.01


def test_make_sampler_wraps_tpe_only_for_a_space_with_priors():
    def config(**kw):
        return StudyConfig(space_name="default", space_text=load_space("default").text, data="digits",
                           model="resnet18", **kw)

    assert isinstance(sampler_for(config(prior_weight=10), 0), PriorGuidedSampler)
    # The default weight is 0 (measured on bench/transfer.py): the priors are stated, not used.
    assert isinstance(sampler_for(config(), 0), optuna.samplers.TPESampler)
    assert isinstance(sampler_for(config(prior_weight=0), 0), optuna.samplers.TPESampler)
    assert isinstance(sampler_for(config(sampler="random"), 0), optuna.samplers.RandomSampler)
    plain = StudyConfig(space_name="t", space_text="params:\n  x: {type: float, low: 0, high: 1}\n",
                        data="digits", model="resnet18")
    assert isinstance(sampler_for(plain, 0), optuna.samplers.TPESampler)


def test_space_show_and_the_dashboard_note_show_the_priors():
    space = load_space("default")
    table = space_table(space)
    assert any(line.split()[:2] == ["dropout", "float"] and "0.4 ± 0.05" in line for line in table.splitlines())
    assert "'adam': 1, 'adamw': 2, 'sgd': 1" in table
    config = StudyConfig(space_name="default", space_text=space.text, data="digits", model="resnet18",
                         prior_weight=10)
    note = study_note(config, space, "digits")
    assert "| `momentum` | float | 0.8 .. 0.99 | optimizer = 'sgd' | 0.9 ± 0.03 |" in note
    assert "* **Priors:** trial n is drawn from them with chance 10/(10+n), else by the `tpe` sampler" in note
    unused = study_note(StudyConfig(space_name="default", space_text=space.text, data="digits", model="resnet18"),
                        space, "digits")
    assert "* **Priors:** stated in the space, not used (random sampler or prior weight 0)" in unused


def test_the_default_priors_are_the_seeds_advice():
    p = load_space("default").params

    def prior(name, **when):
        return next(b for b in p[name] if b.applies(when)).prior

    assert (prior("lr", freeze="head").centre, prior("lr", freeze="head").spread) == (1e-3, 0.5)
    assert prior("backbone_lr", freeze="full").centre == 1e-5
    optimizer = p["optimizer"][0]
    weights = dict(zip(optimizer.choices, optimizer.prior.weights))
    assert max(weights, key=weights.get) == "adamw"
    assert prior("momentum", optimizer="sgd").centre == 0.9
    assert prior("plateau_factor", scheduler="plateau").centre == 0.1
    assert prior("plateau_patience", scheduler="plateau").centre == 3
    assert prior("dropout").centre == 0.4


# --- the study's sampler and pruner settings -------------------------------------------------

def default_config(**kw) -> StudyConfig:
    return StudyConfig(space_name="default", space_text=load_space("default").text, data="digits",
                       model="resnet18", **kw)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("prior_weight", -1, "--prior-weight must be a number >= 0, got -1"),
        ("prior_weight", float("nan"), "--prior-weight must be a number >= 0, got nan"),
        ("startup_trials", -1, "--startup-trials must be an integer >= 0, got -1"),
        ("min_resource", 0, "--min-resource must be an integer >= 1, got 0"),
        ("reduction_factor", 1, "--reduction-factor must be an integer >= 2, got 1"),
        ("reduction_factor", 2.5, "--reduction-factor must be an integer >= 2, got 2.5"),
    ],
)
def test_bad_sampler_and_pruner_settings_are_named(field, value, message):
    from tuner.errors import TunerError

    with pytest.raises(TunerError) as info:
        default_config(**{field: value})
    assert str(info.value) == message


def test_pruner_and_sampler_settings_reach_optuna():
    pruner = pruner_for(default_config(pruner="hyperband", min_resource=2, reduction_factor=2, max_epochs=8))
    study = optuna.create_study(pruner=pruner)
    # Hyperband's brackets come from the resources: log2(8 / 2) + 1 = 3 brackets.
    trial = study.ask()
    trial.report(0.5, 1)
    trial.should_prune()
    assert pruner._n_brackets == 3
    sampler = sampler_for(default_config(startup_trials=3), 0)
    assert sampler._n_startup_trials == 3  # plain TPE: the default prior weight is 0
