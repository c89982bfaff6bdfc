"""Settings objects as command-line options and environment variables: derived here, once.

Every command's settings are frozen dataclasses (`EngineConfig` and `GeneratorSettings` in
`config.py`, `stream/settings.py`, `offline/settings.py`, `cli/demo.py`). A field with ``help``
metadata (`option_meta`) is an option, ``--<field-name>`` unless its ``flag`` spells it
otherwise; its default, type and choices come from the field, so each is written once. A field
whose default is itself a settings object is a *part*: its options are the command's too, flat
(``--window``, not ``--engine-window``). Every option falls back to ``SHOPSTREAM_<OPTION>``;
a flag on the command line wins. An ``env_only`` field (the signing key) is never an option (a
command line shows in ``ps``): it is read from its variable, or from the file ``--<name>-file``
names.

Values are checked by the objects themselves (`check`), each refusal a `ConfigError`; built from
flat options (`build`), a refusal names the option as typed (``--checkpoint-every``), and the
command line prints that one line and exits 2.

>>> from dataclasses import dataclass, field
>>> @dataclass(frozen=True)
... class Demo:
...     every: int = field(default=10, metadata=option_meta("how often", flag="--demo-every"))
...     def __post_init__(self):
...         check(self, (("every", self.every >= 1, "must be >= 1"),))
>>> build(Demo, {"demo_every": 3}, strict=True)
Demo(every=3)
>>> build(Demo, {"demo_every": 0}, strict=True)
Traceback (most recent call last):
...
shopstream.options.ConfigError: demo_every 0 must be >= 1
"""

from __future__ import annotations

import argparse
import os
import stat
from dataclasses import Field, field, fields, is_dataclass
from typing import Any, Iterator, Mapping, Optional, TypeVar

ENV_PREFIX = "SHOPSTREAM_"

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting out of its range: which one (a field, or its option once `build` named it),
    its value and the rule; `typed` spells it as typed (``--checkpoint-every``)."""

    def __init__(self, name: str, value: Any, rule: str):
        shown = "" if value is None else f" {value!r}"
        super().__init__(f"{name}{shown} {rule}")
        self.name, self.value, self.rule = name, value, rule

    @property
    def typed(self) -> str:
        """The refusal as the command line prints it: ``--checkpoint-every 0 must be >= 1``."""
        shown = "" if self.value is None else f" {self.value!r}"
        return f"{as_flag(self.name)}{shown} {self.rule}"


def check(config, rules) -> None:
    """Raise `ConfigError` for the first (name, ok, rule) of `rules` that does not hold."""
    for name, ok, rule in rules:
        if not ok:
            raise ConfigError(name, getattr(config, name), rule)


def option_meta(help: str, **extra) -> dict:
    """A field's metadata that makes it an option: its ``help``, and optionally ``flag`` (its
    spelling), ``choices``, ``type`` (when the default is None) and ``secret`` (never shown). A
    secret that is never an option has ``{"env_only": True, "about": text}`` instead: only its
    variable or the file ``--<name>-file`` names give it."""
    return {"help": help, **extra}


def environ(name: str) -> Optional[str]:
    """The one place settings read the environment (the option defaults, the secrets)."""
    return os.environ.get(name)


def as_flag(name: str) -> str:
    """``checkpoint_every`` -> ``--checkpoint-every``; a variable (``SHOPSTREAM_SIGNING_KEY``) stays itself."""
    if name.startswith("SHOPSTREAM_"):
        return name
    return "--" + name.lstrip("-").replace("_", "-")


def env_name(flag: str) -> str:
    """``--bootstrap-servers`` -> ``SHOPSTREAM_BOOTSTRAP_SERVERS``."""
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def option_name(part, f: Field) -> str:
    """The flat option name of a field (``_`` for ``-``): its ``flag`` metadata, else its name.
    (`part` is the class the field belongs to; kept for callers that pass it.)"""
    flag = f.metadata.get("flag")
    return flag.lstrip("-").replace("-", "_") if flag else f.name


def part_of(f: Field) -> Optional[type]:
    """The settings class of a field whose default is a settings object (a part), else None."""
    default = f.default
    return type(default) if is_dataclass(default) and not isinstance(default, type) else None


def leaves(cls, skip: tuple = ()) -> Iterator[tuple[type, Field]]:
    """(class, field) of every option of `cls`, parts included, in field order."""
    for f in fields(cls):
        part = part_of(f)
        if part is not None:
            yield from leaves(part, skip + tuple(f.metadata.get("skip", ())))
        elif ("help" in f.metadata or f.metadata.get("env_only")) and f.name not in skip:
            yield cls, f


# -- from flat options to a settings object --------------------------------------------------------------------------


def build(cls: type[T], given: Mapping[str, Any], strict: bool, environment: bool = False) -> T:
    """A `cls` from flat option names (``_`` for ``-``), each routed to the part that owns it;
    None means "not given". `strict`: an unknown name is an error. `environment`: the
    ``env_only`` secrets are read from their variables, or from ``--<name>-file``."""
    given = {k: v for k, v in given.items() if v is not None}
    given = {**_secrets(cls, given, environment), **given}
    used: set = set()
    obj = _build(cls, given, used)
    unknown = sorted(set(given) - used)
    if strict and unknown:
        raise TypeError(f"unknown {cls.__name__.removesuffix('Settings').lower()} settings: {unknown}")
    return obj


def _build(cls, given: Mapping[str, Any], used: set):
    values, flat = {}, {}
    for f in fields(cls):
        part = part_of(f)
        if part is not None:
            values[f.name] = _build(part, given, used)
            continue
        key = option_name(cls, f)
        flat[f.name] = key
        used.add(key)
        if f.metadata.get("env_only"):
            used.add(f"{key}_file")
        if key in given:
            values[f.name] = tuple(given[key]) if isinstance(given[key], list) else given[key]
    try:
        return cls(**values)
    except ConfigError as exc:  # named as the command line spells it (--checkpoint-seconds)
        raise ConfigError(flat.get(exc.name, exc.name), exc.value, exc.rule) from None


def _secrets(cls, given: Mapping[str, Any], environment: bool) -> dict:
    """The ``env_only`` fields' values: from ``--<name>-file`` or (with `environment`) from their
    variable; not both: two sources of one key is a mistake to point out, not to settle."""
    found = {}
    for part, f in leaves(cls):
        if not f.metadata.get("env_only"):
            continue
        key = option_name(part, f)
        variable, path = env_name(key), given.get(f"{key}_file")
        text = environ(variable) if environment else None
        # Empty is refused, not taken for "no key": an unset shell variable (--signing-key-file "$KEYFILE")
        # would otherwise turn every signature check off without a word.
        if path is not None and not path.strip():
            raise ConfigError(f"{key}_file", path, "is empty: name the key's file, or leave the option out to run "
                                                   "without a key")
        if path:
            if text is not None:
                raise ConfigError(f"{key}_file", path, f"and {variable} are both set: give the key one way")
            found[key] = read_secret_file(f"{key}_file", path)
        elif text is not None:   # (never echoed: the value of a refusal is None)
            if not text:
                raise ConfigError(variable, None, "is set but empty: unset it to run without a key")
            found[key] = secret_bytes(variable, None, text.encode())
    return found


def secret_bytes(name: str, where: Any, data: bytes) -> bytes:
    """A key's bytes without the line end an editor or ``echo`` adds, from a file or a variable
    alike (a key that kept its newline one way and not the other refused every checkpoint the
    other worker wrote); one of only blanks is refused."""
    data = data.rstrip(b"\r\n")
    if not data.strip():
        raise ConfigError(name, where, "is empty" if not data else "is only blanks")
    return data


#: A key file longer than this is not a key (/dev/zero would be read until the memory runs out).
MAX_SECRET_BYTES = 64 * 1024


def read_secret_file(name: str, path: str) -> bytes:
    """A key file's bytes (`secret_bytes`): a regular file of at most `MAX_SECRET_BYTES` (a FIFO
    would wait for a writer, a device never end)."""
    try:
        with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ConfigError(name, path, "is not a regular file (a pipe, device or directory): name the "
                                              "key's file")
            data = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ConfigError(name, path, f"cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigError(name, path, f"holds more than {MAX_SECRET_BYTES} bytes: not a key")
    return secret_bytes(name, path, data)


class Settings:
    """What every command's settings class can do (a mixin of frozen dataclasses)."""

    @classmethod
    def from_options(cls: type[T], **options: Any) -> T:
        """From flat option names; an unknown name is an error."""
        return build(cls, options, strict=True)

    @classmethod
    def from_args(cls: type[T], args) -> T:
        """From a parsed command line (names that are not settings, like ``command``, are
        ignored), the secrets from the environment or their files."""
        return build(cls, vars(args), strict=False, environment=True)

    @classmethod
    def from_mapping(cls: type[T], given: Mapping[str, Any], strict: bool) -> T:
        return build(cls, given, strict)


# -- the command line ------------------------------------------------------------------------------------------------


def truthy(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def option(parser, flag: str, help: str, default=None, type=str, many: bool = False, switch: bool = False,
           choices=None, secret: bool = False) -> None:
    """Add --flag whose default comes from SHOPSTREAM_FLAG when set.

    `many`: several values (space-separated on the command line, comma-separated in env);
    `switch`: a boolean flag (env: 1/true/yes or 0/false/no); `secret`: never show the value."""
    env = env_name(flag)
    raw = environ(env)
    try:
        if raw is not None and switch and not raw.strip():
            pass   # set but empty: unset, as for the other options (it turned default-on switches off)
        elif raw is not None:
            if switch:
                default = truthy(raw)
            elif many:
                default = [type(part.strip()) for part in raw.split(",") if part.strip()]
            else:
                default = type(raw)
            # argparse checks `choices` only on the command line, never a default: the environment's here
            for value in default if many else [default]:
                if choices is not None and not switch and value not in choices:
                    raise ValueError(f"must be one of {', '.join(map(str, choices))}")
    except ValueError as exc:
        parser.error(f"{env}={raw!r}: {exc}")
    hidden = secret or default in (None, False)
    shown = f"{help} [env {env}" + ("" if hidden else f", default {default}") + "]"
    if switch:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=bool(default), help=shown)
    else:
        parser.add_argument(flag, type=type, default=default, help=shown, choices=choices,
                            **({"nargs": "+", "action": _Many} if many else {}))


def add_options(parser, settings_class, skip: tuple = ()) -> None:
    """One option per field of `settings_class` (parts included) that has ``help`` metadata:
    its name (or ``flag``), default, type and choices from the class."""
    for _, f in leaves(settings_class, skip):
        meta = f.metadata
        flag = meta.get("flag") or as_flag(f.name)
        if meta.get("env_only"):  # the secret itself is never an option: a file holding it is
            SECRET_FLAGS.add(flag)
            option(parser, f"{flag}-file", f"file holding the {meta['about']} (or set {env_name(flag)}; "
                                            "never on the command line, where ps shows it)")
            # Refused by name, its value never echoed (else argparse takes it for --<name>-file, abbreviated).
            parser.add_argument(flag, action=_Refused, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                                metavar="(refused)")
            continue
        default = f.default
        if isinstance(default, bool):
            option(parser, flag, meta["help"], default=default, switch=True)
        elif isinstance(default, tuple):
            option(parser, flag, meta["help"], default=list(default), many=True)
        else:
            option(parser, flag, meta["help"], default=default, type=meta.get("type") or type(default),
                   choices=meta.get("choices"), secret=meta.get("secret", False))


#: The flags of secrets (refused on the command line), as `add_options` met them.
SECRET_FLAGS: set[str] = set()


def refuse_typed_secrets(argv: list[str]) -> Optional[str]:
    """Why `argv` holds what looks like a secret's value, or None: ``--signing-k=VALUE`` is an
    abbreviation argparse finds ambiguous, and its error would repeat VALUE (a secret typed where
    ps and the shell's history show it, then printed to the log)."""
    for argument in argv:
        if argument == "--":
            break
        name, equals, _ = argument.partition("=")
        secret = next((flag for flag in sorted(SECRET_FLAGS) if flag.startswith(name)), None) \
            if equals and name.startswith("--") and len(name) > 2 else None
        if secret is not None:   # (the file's flag, spelled out or abbreviated past the secret's name, is not)
            return (f"{name}=...: not an option (a command line shows in ps; the value is not repeated here): "
                    f"set {env_name(secret)}, or name a file with {secret}-file")
    return None


class _Many(argparse.Action):
    """A flag of several values: its first use replaces the default, a later one adds to it (argparse's
    own kept only the last one's values; its "extend" would add to the default)."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, list(values) if current is self.default else [*current, *values])


class _Refused(argparse.Action):
    """A secret typed on the command line: refused without repeating it."""

    def __call__(self, parser, namespace, values, option_string=None):
        variable = env_name(self.option_strings[0])
        parser.error(f"{option_string} is not an option (a command line shows in ps): set {variable}, "
                     f"or name a file with {option_string}-file")


def same_as(settings_class, name: str, **meta) -> Any:
    """A field with the default and help of `settings_class`'s field `name` (``meta`` overrides):
    one command's setting written once for the others that share it (``--topic``)."""
    [f] = [f for f in fields(settings_class) if f.name == name]
    return field(default=f.default, metadata={**f.metadata, **meta})


def progress_bar() -> Any:
    """The ``--progress`` switch of the commands that show one."""
    return field(default=True, metadata=option_meta("show a progress bar"))


__all__ = ["ConfigError", "Settings", "add_options", "as_flag", "build", "check", "env_name", "environ", "leaves",
           "option", "option_meta", "option_name", "part_of", "progress_bar", "read_secret_file", "same_as",
           "secret_bytes", "SECRET_FLAGS", "refuse_typed_secrets"]
