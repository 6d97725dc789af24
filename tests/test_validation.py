"""Every config knob is type- and range-checked when the config is built (bdlib/registry.py
``check_fields``/``knob``): a bad value fails at once, naming the field, the value and what
is valid, instead of failing deep inside training or — worse — running and being stored
as a real result (``epochs=-5``: an FT "run" whose after equals its before)."""
import dataclasses
import math

import pytest

from bdlib.attacks import ATTACKS, make_attack
from bdlib.defenses import DEFENSES, make_defense
from bdlib.profiles import Profile, get_profile


# --- the knobs the issue names -------------------------------------------------------------
@pytest.mark.parametrize("epochs", [-5, 0])
def test_ft_epochs_below_one_are_rejected_through_the_api(epochs):
    """``make_defense("ft", epochs=-5)`` (and 0) used to build a defense that fine-tuned for
    no epoch; its result was stored as a real FT run."""
    with pytest.raises(ValueError, match=rf"^ft defense: field epochs = {epochs} is invalid; "
                                                r"valid: integer in \[1, inf\)$"):
        make_defense("ft", epochs=epochs)


@pytest.mark.parametrize("field,value", [("defense_epochs", 0), ("defense_epochs", -5), ("train_epochs", 0),
                                         ("train_batch_size", 0), ("defense_batch_size", 0)])
def test_profile_overrides_below_one_are_rejected(field, value):
    with pytest.raises(ValueError, match=rf"profile: field {field} = {value} is invalid; valid: integer in \[1, inf\)"):
        get_profile("smoke", **{field: value})


def test_a_string_learning_rate_is_rejected_naming_its_type():
    with pytest.raises(ValueError, match=r"field lr = 'abc' is invalid; valid: number in \(0, inf\) \(got str\)"):
        make_defense("ft", lr="abc")
    with pytest.raises(ValueError, match=r"field train_lr = 'abc' is invalid.*\(got str\)"):
        get_profile("smoke", train_lr="abc")
    with pytest.raises(ValueError, match=r"field lr = 'abc'"):
        make_attack("flowmur", lr="abc")


def test_zero_batch_size_is_rejected():
    for name in ("ft", "gnft", "nad", "anp", "ibau"):
        with pytest.raises(ValueError, match=rf"{name} defense: field batch_size = 0 is invalid; "
                                             r"valid: integer in \[1, inf\)"):
            make_defense(name, batch_size=0)
    with pytest.raises(ValueError, match=r"field batch_size = 0"):
        make_attack("flowmur", batch_size=0)


@pytest.mark.parametrize("rate", [1.5, 1.0, 0.0, -0.1])
def test_profile_poison_rate_must_lie_in_the_open_unit_interval(rate):
    with pytest.raises(ValueError, match=rf"profile: field poison_rate = {rate} is invalid; valid: number in \(0, 1\)"):
        get_profile("smoke", poison_rate=rate)


def test_a_bool_is_not_an_integer_or_a_number():
    """``True`` is an int to Python; as ``epochs`` it would silently mean one epoch."""
    with pytest.raises(ValueError, match=r"field epochs = True is invalid; valid: integer in \[1, inf\) \(got bool\)"):
        make_defense("ft", epochs=True)
    with pytest.raises(ValueError, match=r"field train_epochs = True .*\(got bool\)"):
        get_profile("smoke", train_epochs=True)
    with pytest.raises(ValueError, match=r"field frames = True .*\(got bool\)"):
        make_attack("badnets", frames=True)
    with pytest.raises(ValueError, match=r"field lr = False .*\(got bool\)"):
        make_defense("gnft", lr=False)


# --- the type rules ------------------------------------------------------------------------
def test_an_int_is_a_float_but_a_float_is_not_an_int():
    assert make_defense("ft", lr=1).config.lr == 1
    assert get_profile("smoke", clean_fraction=1).clean_fraction == 1
    with pytest.raises(ValueError, match=r"field epochs = 2.0 is invalid; valid: integer in \[1, inf\) \(got float\)"):
        make_defense("ft", epochs=2.0)
    with pytest.raises(ValueError, match=r"field cosine = 1 is invalid; valid: bool \(got int\)"):
        make_defense("ft", cosine=1)


def test_non_finite_numbers_are_rejected_even_without_a_declared_range():
    with pytest.raises(ValueError, match="field r = nan"):
        make_defense("gnft", r=float("nan"))
    with pytest.raises(ValueError, match=r"field value = inf is invalid; valid: finite number"):
        make_attack("badnets", value=math.inf)
    with pytest.raises(ValueError, match="field train_lr = inf"):
        get_profile("smoke", train_lr=math.inf)


def test_optional_union_and_tuple_fields():
    assert make_defense("ibau", pert_steps=None).config.pert_steps is None
    with pytest.raises(ValueError, match=r"field pert_steps = 0 is invalid; valid: integer in \[1, inf\) or None"):
        make_defense("ibau", pert_steps=0)
    # a list stands for a tuple (knobs round-trip through JSON), element types and ranges still apply
    assert make_defense("nad", betas=[1.0, 2, 3.0]).config.betas == [1.0, 2, 3.0]
    with pytest.raises(ValueError, match=r"field betas = \('a',\) is invalid; valid: tuple of number"):
        make_defense("nad", betas=("a",))
    with pytest.raises(ValueError, match=r"field betas = \(1.0, -2.0\) is invalid; "
                                         r"valid: tuple of number in \[0, inf\)"):
        make_defense("nad", betas=(1.0, -2.0))
    with pytest.raises(ValueError, match=r"field warps = \(\) is invalid; valid: non-empty tuple"):
        make_attack("vsvc", warps=())
    # the profile's target: a class index >= 0 or a class name (resolved against the data later)
    assert get_profile("smoke", target_label="up").target_label == "up"
    with pytest.raises(ValueError, match=r"field target_label = -1 is invalid; valid: integer in \[0, inf\) or string"):
        get_profile("smoke", target_label=-1)
    with pytest.raises(ValueError, match=r"field target_label = 2.5"):
        get_profile("smoke", target_label=2.5)
    with pytest.raises(ValueError, match=r"field models = \(\) is invalid; valid: non-empty tuple of string"):
        get_profile("smoke", models=())
    with pytest.raises(ValueError, match=r"field attack_knobs = 'x' is invalid; valid: dict \(got str\)"):
        get_profile("smoke", attack_knobs="x")


def test_choices_are_checked_on_the_config_itself():
    from bdlib.attacks.blended import BlendedConfig
    from bdlib.defenses.gnft import GNFTConfig

    with pytest.raises(ValueError, match=r"BlendedConfig: field kind = 'chirp' is invalid; valid: noise, tones"):
        BlendedConfig(kind="chirp")
    with pytest.raises(ValueError, match=r"GNFTConfig: field norm = 'l2' is invalid; valid: per_tensor, global"):
        GNFTConfig(norm="l2")


def test_epoch_ranges_per_defense():
    """``epochs`` is >= 1 wherever it is the work of the defense (I-BAU: unlearning rounds);
    Fine-Pruning and TSBD accept 0, which skips only their closing fine-tuning stage."""
    for name in ("ft", "gnft", "ftsam", "nad", "anp", "ibau"):
        with pytest.raises(ValueError, match=rf"{name} defense: field epochs = 0"):
            make_defense(name, epochs=0)
    assert make_defense("fp", epochs=0).config.epochs == 0
    assert make_defense("tsbd", epochs=0).config.epochs == 0
    for name in ("fp", "tsbd"):
        with pytest.raises(ValueError, match=rf"{name} defense: field epochs = -1 is invalid; "
                                             r"valid: integer in \[0, inf\)"):
            make_defense(name, epochs=-1)
    with pytest.raises(ValueError, match=r"field teacher_epochs = 0"):
        make_defense("nad", teacher_epochs=0)
    with pytest.raises(ValueError, match=r"field unlearn_max_epochs = 0"):
        make_defense("tsbd", unlearn_max_epochs=0)


# --- construction paths ----------------------------------------------------------------------
def test_validation_runs_on_direct_construction_and_replace():
    from bdlib.defenses.ft import FTConfig

    with pytest.raises(ValueError, match=r"^FTConfig: field epochs = -5 is invalid"):
        FTConfig(epochs=-5)
    with pytest.raises(ValueError, match=r"^profile: field defense_epochs = 0"):
        Profile(name="mine", defense_epochs=0)
    with pytest.raises(ValueError, match="field poison_rate = 1.5"):
        get_profile("smoke").replace(poison_rate=1.5)
    with pytest.raises(ValueError, match="field clean_fraction = 0"):
        dataclasses.replace(get_profile("default"), clean_fraction=0)


def _all_configs():
    out = [("profile", Profile, {"name": "probe"})]
    out += [(f"{n} attack", ATTACKS.get(n).Config, {}) for n in ATTACKS]
    out += [(f"{n} defense", DEFENSES.get(n).Config, {}) for n in DEFENSES]
    return out


@pytest.mark.parametrize("what,cls,base,field", [(w, c, base, f.name) for w, c, base in _all_configs()
                                                   for f in dataclasses.fields(c)])
def test_every_field_of_every_config_is_type_checked(what, cls, base, field):
    """No field accepts an arbitrary object: each has a declared type that is enforced."""
    cls(**base)  # the defaults are valid
    with pytest.raises(ValueError, match=rf"field {field} = <object object at .*> is invalid; valid: .*"
                                                r"\(got object\)"):
        cls(**{**base, field: object()})


# --- the helper ------------------------------------------------------------------------------
def test_interval_notation():
    from bdlib.registry import Interval

    half_open = Interval.parse("(0, 1]")
    assert 1 in half_open and 0.5 in half_open and 0 not in half_open and 1.01 not in half_open
    unbounded = Interval.parse("[1, inf)")
    assert 1 in unbounded and 10**9 in unbounded and math.inf not in unbounded and math.nan not in unbounded
    assert str(Interval.parse("( -inf ,0 ]")) == "(-inf, 0]"
    with pytest.raises(ValueError, match="bad interval"):
        Interval.parse("0..1")
    with pytest.raises(ValueError, match="lower bound above upper bound"):
        Interval.parse("[2, 1]")


def test_check_fields_on_a_new_config():
    """A new attack/defense config gets the checks by declaring knobs and calling check_fields."""
    from bdlib.registry import InvalidFieldError, check_fields, knob

    @dataclasses.dataclass
    class MyConfig:
        steps: int = knob(10, "[1, 1000]")
        mode: str = knob("a", choices=("a", "b"))
        scale: float | None = None

        def __post_init__(self):
            check_fields(self, "my attack")

    MyConfig(steps=1000, mode="b", scale=2)
    with pytest.raises(ValueError, match=r"^my attack: field steps = 1001 is invalid; valid: integer in \[1, 1000\]$"):
        MyConfig(steps=1001)
    with pytest.raises(ValueError, match=r"^my attack: field mode = 'c' is invalid; valid: a, b$"):
        MyConfig(mode="c")
    with pytest.raises(ValueError, match=r"field scale = '2' is invalid; valid: finite number or None \(got str\)"):
        MyConfig(scale="2")
    err = pytest.raises(InvalidFieldError, MyConfig, steps=0).value
    assert (err.field, err.value, err.valid) == ("steps", 0, "integer in [1, 1000]") and isinstance(err, ValueError)
