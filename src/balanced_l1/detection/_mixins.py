"""Give one object extra behaviour by swapping its class for a cached subclass with a mixin.

The detection adapters change how *one* torchvision module instance computes its losses or
samples its training RoIs, without touching torchvision's module globals and without affecting
any other instance in the process::

    module.__class__ = _with_mixin(type(module), SomeMixin)

:func:`_with_mixin` composes: applying mixin ``A`` and then mixin ``B`` gives a class whose MRO is
``B``, then ``A``, then the original class, so ``B`` overrides ``A`` and both can reach the
original through ``super()``. Composed classes are cached per ``(base, mixin)``, so every instance
adapted the same way shares one class, and applying a mixin that is already there returns the class
unchanged (the operation is idempotent). Instances of composed classes deep-copy and pickle: they
are rebuilt from the original class and the list of mixins, which are ordinary importable classes.
A mixin with a true ``mixin_transient`` attribute (the gradient-balance monitor's, which belong to
one model) is left out of the copy, whose state its ``__getstate__`` cleans.
"""

from __future__ import annotations

from typing import Any

_CACHE: dict[tuple[type, type], type] = {}


def _recipe(cls: type) -> tuple[type, tuple[type, ...]]:
    """Return ``(original class, mixins in the order they were applied)`` for any class."""
    recipe: tuple[type, tuple[type, ...]] | None = cls.__dict__.get("_mixin_recipe")
    return recipe if recipe is not None else (cls, ())


def _rebuild(base: type, mixins: tuple[type, ...]) -> Any:
    """Create an empty instance of ``base`` with ``mixins`` applied (the pickle constructor)."""
    cls: Any = base
    for mixin in mixins:
        cls = _with_mixin(cls, mixin)
    return cls.__new__(cls)


def _reduce_ex(self: Any, protocol: int) -> tuple[Any, ...]:
    base, mixins = _recipe(type(self))
    kept = tuple(mixin for mixin in mixins if not getattr(mixin, "mixin_transient", False))
    getstate = getattr(self, "__getstate__", None)
    state = getstate() if getstate is not None else self.__dict__
    return _rebuild, (base, kept), state


def _what(value: object) -> str:
    return f"class {value.__name__}" if isinstance(value, type) else f"a {type(value).__name__} instance"


def _label(mixin: type) -> str:
    return mixin.__dict__.get("mixin_label", mixin.__name__.lstrip("_"))


def _with_mixin(base: type, mixin: type) -> type:
    """Return the cached subclass of ``base`` that puts ``mixin`` first in its MRO.

    Args:
        base: the class to extend; may itself be a class returned by :func:`_with_mixin`.
        mixin: the class whose methods override ``base``'s; it may set a ``mixin_label`` class
            attribute, used in the composed class's name (default: its name without leading ``_``).

    Returns:
        ``base`` itself if it already has ``mixin`` in its MRO, else a subclass of ``(mixin, base)``
            named ``f"{base.__name__}With{label}"``, the same object for every call with these arguments.

    Example:
        >>> class Greeter:
        ...     def greet(self) -> str:
        ...         return "hello"
        >>> class Loud:
        ...     def greet(self) -> str:
        ...         return super().greet().upper()
        >>> g = Greeter()
        >>> g.__class__ = _with_mixin(Greeter, Loud)
        >>> g.greet(), type(g).__name__, _with_mixin(type(g), Loud) is type(g)
        ('HELLO', 'GreeterWithLoud', True)
    """
    if not isinstance(base, type) or not isinstance(mixin, type):
        raise TypeError(f"base and mixin must be classes, got base={_what(base)} and mixin={_what(mixin)}")
    if issubclass(base, mixin):
        return base
    key = (base, mixin)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    original, mixins = _recipe(base)
    name = f"{base.__name__}With{_label(mixin)}"
    namespace = {
        "__module__": mixin.__module__,
        "__qualname__": name,
        "__doc__": base.__doc__,
        "_mixin_recipe": (original, (*mixins, mixin)),
        "__reduce_ex__": _reduce_ex,
    }
    composed = type(name, (mixin, base), namespace)
    return _CACHE.setdefault(key, composed)
