"""_with_mixin: per-instance behaviour by a cached, composable, picklable subclass."""

from __future__ import annotations

import copy
import pickle

import pytest
from torch import nn

from balanced_l1.detection._mixins import _with_mixin


class Base(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)

    def describe(self) -> str:
        return "base"


class Shout:
    def describe(self) -> str:
        return super().describe().upper()  # type: ignore[misc]


class Exclaim:
    mixin_label = "Bang"

    def describe(self) -> str:
        return super().describe() + "!"  # type: ignore[misc]


def test_second_mixin_comes_first_in_the_mro_and_both_apply() -> None:
    obj = Base()
    obj.__class__ = _with_mixin(type(obj), Shout)
    obj.__class__ = _with_mixin(type(obj), Exclaim)
    mro = type(obj).__mro__
    assert mro.index(Exclaim) < mro.index(Shout) < mro.index(Base)
    assert obj.describe() == "BASE!"


def test_composed_class_is_named_after_base_and_mixins() -> None:
    assert _with_mixin(_with_mixin(Base, Shout), Exclaim).__name__ == "BaseWithShoutWithBang"


def test_composed_classes_are_cached_per_base_and_mixin() -> None:
    assert _with_mixin(Base, Shout) is _with_mixin(Base, Shout)
    assert _with_mixin(_with_mixin(Base, Shout), Exclaim) is _with_mixin(_with_mixin(Base, Shout), Exclaim)
    assert _with_mixin(Base, Exclaim) is not _with_mixin(Base, Shout)


def test_applying_a_mixin_already_present_changes_nothing() -> None:
    both = _with_mixin(_with_mixin(Base, Shout), Exclaim)
    assert _with_mixin(both, Shout) is both
    assert _with_mixin(both, Exclaim) is both


def test_other_instances_keep_their_class() -> None:
    adapted, other = Base(), Base()
    adapted.__class__ = _with_mixin(Base, Shout)
    assert type(other) is Base and other.describe() == "base"


@pytest.mark.parametrize(
    "clone", [copy.deepcopy, lambda obj: pickle.loads(pickle.dumps(obj))], ids=["deepcopy", "pickle"]
)
def test_composed_instance_copies_with_its_class_and_state(clone: object) -> None:
    obj = Base()
    obj.__class__ = _with_mixin(_with_mixin(Base, Shout), Exclaim)
    copied = clone(obj)  # type: ignore[operator]
    assert type(copied) is type(obj)
    assert copied.describe() == "BASE!"
    assert copied.layer.weight.tolist() == obj.layer.weight.tolist()
    assert copied.layer is not obj.layer


def test_non_class_arguments_raise_type_error() -> None:
    with pytest.raises(
        TypeError, match=r"base and mixin must be classes, got base=a Base instance and mixin=class Shout$"
    ):
        _with_mixin(Base(), Shout)  # type: ignore[arg-type]
