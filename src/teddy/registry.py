"""The one registry: name -> entry, for models, distillation methods, datasets and protocols.

    MODELS = Registry("architecture", "base.arch / evaluate.students")
    MODELS.register("convnet", entry)      # a second "convnet" is refused
    MODELS["convnet"]                      # an unknown name: one line listing the known ones

In the style of timm's `register_model`: each module registers its own entries when it is
imported, so adding one is one file (or one call), never an edit of a central list."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from teddy.errors import TeddyError


class UnknownName(TeddyError, KeyError):
    """A name no entry is registered under (a KeyError too, so `Mapping.get` and `in` work)."""

    __str__ = TeddyError.__str__


class Registry(Mapping):
    """Entries by name, registered once each. `kind` and `key` word the errors: the kind of
    thing, and the config key a user spells its name in."""

    def __init__(self, kind: str, key: str):
        self.kind, self.key = kind, key
        self._entries: dict[str, object] = {}

    def register(self, name: str, entry):
        """Add `entry` under `name` and return it; a name already taken is refused."""
        if name in self._entries:
            raise TeddyError(f"{self.kind} '{name}' registered twice")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (a test's toy entry, once the test is done)."""
        del self._entries[name]

    def lookup(self, name: str, key: str | None = None):
        """The entry of `name`; an unknown name is one line naming the config key (`key`, else the
        registry's) and the known names."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(f"unknown {self.kind} '{name}' (config key {key or self.key}); "
                              f"known: {', '.join(sorted(self._entries)) or 'none'}") from None

    def __getitem__(self, name: str):
        return self.lookup(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"
