"""Lock models, registered by name; out-of-tree ones load through the ``replay.models``
entry-point group (an entry point resolves to a ``Model``)."""

from __future__ import annotations

from importlib.metadata import entry_points

from .base import Layout, Model
from .kernels import MODELS as _BUILTIN


class ModelError(ValueError):
    pass


def registry() -> dict[str, Model]:
    models = dict(_BUILTIN)
    for ep in entry_points(group="replay.models"):
        try:
            m = ep.load()
        except Exception as e:  # a broken plugin must not break the tool
            raise ModelError(f"model plugin {ep.name!r} failed to load: {e}") from None
        if not isinstance(m, Model):
            raise ModelError(f"model plugin {ep.name!r} is not a replay.models.Model")
        models[m.name] = m
    return models


def get_model(name: str) -> Model:
    """A model by name; ``NAME@RELEASE`` (``pervma@6.2``) is that lock design on another
    release's fault path (replay/models/kernels.py FAULT_PATH_KERNELS: batch sizes), its
    x86 fault entry (kernels.on_release_entry(): prefetchw before 6.16) and, for the
    per-VMA rwsem designs, its mm_struct (on_release_mm()), as when a design was measured
    as patches on another kernel."""
    import dataclasses

    from .kernels import fault_path_kernel, on_release_entry

    base, _, release = name.partition("@")
    reg = registry()
    if base not in reg:
        raise ModelError(f"unknown model {base!r}; known: {', '.join(sorted(reg))}")
    if not release:
        return reg[base]
    try:
        fault_path_kernel(release)
    except ValueError as e:
        raise ModelError(f"unknown model {name!r}: {e}") from None
    m = reg[base]
    layout = on_release_mm(m.layout, release)
    return dataclasses.replace(m, name=name, release=release, layout=layout,
                               fault=on_release_entry(m.fault, release),
                               kernel_fault=on_release_entry(m.kernel_fault, release))


def on_release_mm(layout, release: str):
    """A per-VMA rwsem design's layout on ``release``: its mm_struct is that kernel's.
    Before "mm: move mm_count into its own cache line" (v6.4) that is 6.2's/6.3's, with
    the series' mm_lock_seq after mmlist (kernels.MM_62_PVL), not the 6.4 layout the
    design merged with - the layout pervma's patches had when they were measured on 6.2;
    from 6.8 the releases' own (kernels.MM_BY_RELEASE: 6.8, 6.11 and 6.13 moved mmap_lock
    and pgd)."""
    import dataclasses

    from .kernels import MM_62_PVL, MM_BY_RELEASE, _release_key

    if not any(layout.mm is m for _, m in MM_BY_RELEASE):  # v7, v8, mainline: their own
        return layout
    want = _release_key(release)
    if want < _release_key("6.4"):
        return dataclasses.replace(layout, mm=MM_62_PVL)
    mm = [m for r, m in MM_BY_RELEASE if _release_key(r) <= want][-1]
    return layout if mm is layout.mm else dataclasses.replace(layout, mm=mm)


__all__ = ["Layout", "Model", "ModelError", "get_model", "registry"]
