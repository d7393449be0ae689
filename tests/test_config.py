"""fedjax_gen/config.py: an option's declaration is its flag, its domain and its saved form. A value
outside the domain is one InvalidValue line naming the field; from_dict rebuilds a config from
config.json's record (unknown keys ignored, the domain checked again); every config's defaults,
and every method's options, survive the JSON round trip equal."""

import dataclasses
import json
import math
import typing

import pytest

from fedjax_gen import config as fconfig
from fedjax_gen import methods
from fedjax_gen.config import DataConfig, PerformanceFlags, RunConfig, option, validated
from fedjax_gen.errors import InvalidValue
from fedjax_gen.privacy.config import PrivacyConfig
from fedjax_gen.run_dir import config_record, dumps


@validated
class Toy:
    n: int = option(3, "a count", min=1)
    rate: typing.Optional[float] = option(None, "an optional rate", gt=0.0)
    frac: float = option(0.5, "a fraction", gt=0.0, lt=1.0)
    mode: str = option("a", "which mode", choices=("a", "b"))
    verbose: bool = option(False, "say more")
    eval_mode: str = option("full", "scoring", flag="--eval")


def test_option_records_its_declaration_and_flag_name_derives_the_flag():
    f = {f.name: f for f in dataclasses.fields(Toy)}
    assert f["n"].default == 3 and f["n"].metadata["help"] == "a count" and f["n"].metadata["min"] == 1
    assert f["mode"].metadata["choices"] == ("a", "b") and f["frac"].metadata["lt"] == 1.0
    assert [fconfig.flag_name(x) for x in dataclasses.fields(Toy)] == [
        "--n", "--rate", "--frac", "--mode", "--verbose", "--eval"]
    assert fconfig.flag_name({x.name: x for x in dataclasses.fields(DataConfig)}["max_train"]) == "--max-train"
    assert fconfig.field_types(Toy)["rate"] == (float, True) and fconfig.field_types(Toy)["n"] == (int, False)


@pytest.mark.parametrize("kwargs,field,line", [
    ({"n": 0}, "n", "n must be >= 1, got 0"),
    ({"rate": 0.0}, "rate", "rate must be > 0.0, got 0.0"),
    ({"rate": -1.5}, "rate", "rate must be > 0.0, got -1.5"),
    ({"frac": 1.0}, "frac", "frac must be < 1.0, got 1.0"),
    ({"frac": 0.0}, "frac", "frac must be > 0.0, got 0.0"),
    ({"mode": "c"}, "mode", "mode 'c' is not one of a, b"),
    ({"frac": math.nan}, "frac", "frac must be a number, got nan"),
    ({"rate": math.inf}, "rate", "rate must be a finite number, got inf"),
])
def test_a_value_outside_its_domain_is_one_line_naming_the_field(kwargs, field, line):
    with pytest.raises(InvalidValue) as e:
        Toy(**kwargs)
    assert e.value.param == field and str(e.value) == line
    assert e.value.render(lambda name: "--" + name) == line.replace(field, "--" + field, 1)


def test_the_domain_bounds_are_inclusive_for_min_exclusive_for_gt_and_lt_and_none_is_allowed():
    assert Toy(n=1, rate=1e-9, frac=0.999, mode="b").n == 1
    assert Toy(rate=None).rate is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        Toy().n = 5  # frozen: a config never changes after its checks


@pytest.mark.parametrize("cls,kwargs,field", [
    (DataConfig, {"clients": 0}, "clients"),
    (DataConfig, {"holdout": 1.0}, "holdout"),
    (DataConfig, {"max_train": 0}, "max_train"),
    (PerformanceFlags, {"bucket": "sometimes"}, "bucket"),
    (PerformanceFlags, {"rounds_per_call": 0}, "rounds_per_call"),
    (RunConfig, {"eval_mode": "fast"}, "eval_mode"),
    (RunConfig, {"checkpoint_every": -1}, "checkpoint_every"),
])
def test_the_run_configs_refuse_their_declared_domains(cls, kwargs, field):
    with pytest.raises(InvalidValue) as e:
        cls(**kwargs)
    assert e.value.param == field and str(e.value).startswith(field) and "\n" not in str(e.value)


def test_validated_runs_each_classes_own_check_base_first_after_the_field_domains():
    calls = []

    @validated
    class Base:
        lo: int = option(0, "low", min=0)
        hi: int = option(1, "high")

        def __post_init__(self):
            calls.append("base")
            if self.hi <= self.lo:
                raise InvalidValue("hi", "{hi} must be > {lo}")

    @validated
    class Child(Base):
        extra: int = option(2, "extra")

        def __post_init__(self):
            calls.append("child")

    Child()
    assert calls == ["base", "child"]
    with pytest.raises(InvalidValue, match="hi must be > lo"):
        Child(lo=3, hi=3)  # the subclass keeps its base's check
    calls.clear()
    with pytest.raises(InvalidValue, match="lo must be >= 0"):
        Child(lo=-1)
    assert calls == []  # the field domains are checked before any class's own check


def test_from_dict_ignores_unknown_keys_defaults_missing_ones_and_checks_the_domain():
    # Unknown keys are ignored (documented): config.json also holds derived settings and flags
    # that a section's class does not declare.
    assert fconfig.from_dict(Toy, {"n": 5, "not_a_field": 1}) == Toy(n=5)
    assert fconfig.from_dict(Toy, {}) == Toy()
    with pytest.raises(InvalidValue) as e:
        fconfig.from_dict(Toy, {"n": 0})
    assert e.value.param == "n"


def _json(obj):
    return json.loads(dumps(obj))


def test_the_configs_defaults_and_set_values_round_trip_through_config_jsons_record():
    for sections in [
        dict(data=DataConfig(), run=RunConfig(), performance=PerformanceFlags(), privacy=PrivacyConfig()),
        dict(data=DataConfig(clients=7, partition="dirichlet:0.5", max_train=50, holdout=0.3),
             run=RunConfig(out="r", eval_mode="quick", progress=False, num_synthetic=0),
             performance=PerformanceFlags(execution="loop", bucket="off"), privacy=PrivacyConfig()),
    ]:
        options = Toy(n=4, rate=0.25)
        rec = _json(config_record("toy", options=options, **sections))
        assert rec["method"] == "toy" and rec["flags"]["n"] == 4 and rec["flags"]["clients"] == sections["data"].clients
        for key, value in sections.items():
            assert fconfig.from_dict(type(value), rec[key]) == value, key
        assert fconfig.from_dict(Toy, rec["options"]) == options


@pytest.mark.parametrize("name", methods.names())
def test_every_methods_default_options_round_trip_through_json(name):
    cls = methods.get(name).Options
    assert fconfig.from_dict(cls, _json(dataclasses.asdict(cls()))) == cls()
