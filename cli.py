"""What every script's command line shares: flags generated from one dataclass, named presets,
one-line errors, the HxW size syntax, and progress that stays readable in a log file.

One `@dataclass` config per script (TrainConfig, SampleConfig, EvalConfig, ...): `option(default,
help)` declares a field and its help text, `config_parser` turns the fields into argparse flags
(bools get --x / --no-x, choices are listed), and `resolve_config` turns a preset name, a config or
a checkpoint's dict into a config of the right class. A bad flag is one line and exit 2, never a
traceback (`OneLineParser`, `usage_error`). `progress` is tqdm on a terminal and a plain line every
few seconds in a log file (tqdm's carriage returns make a log unreadable).

Used by every file with a command line; it imports nothing of the project (the bottom of the house).
Test: python -m pytest -q tests/test_data.py tests/test_train.py
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
import types
import typing

from tqdm import tqdm


# ----------------------------------------------------------------------------- terminal conventions

def parse_size(text: str, flag: str = "--size") -> tuple:
    """'256x176' -> (256, 176), height x width: the one size syntax of every script's flags."""
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip().lower())
    h, w = (int(g) for g in match.groups()) if match else (0, 0)
    if h == 0 or w == 0:
        raise ValueError(f"{flag} {text!r}: expected HxW such as 256x176")
    return h, w


class OneLineParser(argparse.ArgumentParser):
    """argparse for every script of the project: a bad flag is one line `error: ...`, exit status 1.

    note: plain argparse prints its whole usage first; the line that says what is wrong is
    easier to see alone (the usage is one `--help` away).
    """

    def error(self, message):
        usage_error(message)


def usage_error(message: str):
    """Stop a command line with the one line `error: MESSAGE` (exit status 1, as a bad flag):
    for what the parser cannot check alone, e.g. that exactly one task flag was given."""
    sys.exit(f"error: {message}")


def option(default, help: str, **extra):
    """A dataclass field that carries its --help text (and choices) for `config_parser`."""
    return dataclasses.field(default=default, metadata=dict(help=help, **extra))


def config_parser(config_cls, description: str, presets: dict | None = None) -> OneLineParser:
    """One --flag per field of a script's @dataclass config; bools get --flag / --no-flag.

    note: every default stays None in the parser, so the caller sees which flags were given
    (a preset, or a process's own default, can then fill the rest).
    """
    parser = OneLineParser(description=description)
    defaults = config_cls()
    for f in dataclasses.fields(config_cls):
        meta = dict(f.metadata)
        default = getattr(defaults, f.name)
        help_text = meta.pop("help", "") + ("" if default is None else f" (default: {default!r})")
        if f.name == "preset" and presets is not None:
            meta["choices"] = list(presets)
        flag = "--" + f.name.replace("_", "-")
        kind = _type_name(f.type)
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, type={"int": int, "float": float}.get(kind, str), default=None,
                                help=help_text, **meta)
    return parser


def _type_name(annotation) -> str:
    """A field's type as a name: int, Optional[int] and int | None -> "int".

    note: under `from __future__ import annotations` the annotation is a string; without it, a
    class or a typing object (Optional[int] has no useful __name__), so both are handled.
    """
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if not isinstance(annotation, str):
        annotation = getattr(annotation, "__name__", str(annotation))
    return annotation.replace("Optional[", "").split("|")[0].strip(" ]")


def parse_config(config_cls, argv=None, description: str = "", presets: dict | None = None):
    """(config, names of the flags given): the dataclass defaults, replaced by the given flags."""
    args = config_parser(config_cls, description, presets).parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    return dataclasses.replace(config_cls(), **given), set(given)


def resolve_config(spec, config_cls, presets: dict, what: str):
    """A preset name, a `config_cls` instance or a dict of its fields -> a `config_cls`.

    The one resolver behind vae.as_vae_config, unet.make_config and fusion.fusion_config (a
    network is built from a preset name on the command line and from a dict in a checkpoint).
    A preset comes back as a copy, so the caller may edit it; an instance comes back as it is.
    `what` names the network in the one-line ValueError ("VAE", "UNet", "fusion").
    """
    if isinstance(spec, config_cls):
        return spec
    if isinstance(spec, str):
        if spec not in presets:
            raise ValueError(f"unknown {what} preset {spec!r}; choices: {', '.join(presets)}")
        return dataclasses.replace(presets[spec])
    if isinstance(spec, dict):
        known = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"{what} config: unknown fields {unknown}; expected some of {sorted(known)}")
        return config_cls(**spec)
    raise ValueError(f"{what} config: expected a preset name, {config_cls.__name__} or dict, "
                     f"got {type(spec).__name__}")


class _LogLines(tqdm):
    """tqdm for a file or CI log: whole lines (no carriage-return frames), the bar left out.

    A line is written when `miniters` more steps are done and `mininterval` seconds have passed
    (or the total is reached, or the bar closes); tqdm's other redraws (set_postfix, the redraw
    after tqdm.write) say nothing new and write nothing.
    """

    def display(self, msg=None, pos=None, final=False):
        shown, now = getattr(self, "_shown", (None, 0.0)), time.monotonic()
        due = shown[0] is None or (self.n - shown[0] >= self.miniters and now - shown[1] >= self.mininterval)
        if msg is not None or self.n == shown[0] or not (due or final or self.n == self.total):
            return False
        self._shown = (self.n, now)
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()
        return True

    def clear(self, nolock=False):
        pass  # a written line stays: there is nothing to erase in a log

    def close(self):
        if not self.disable:
            self.display(final=True)  # the final count, unless that line is already out
        super().close()


def progress(iterable=None, log_seconds: float = 5.0, **tqdm_kwargs) -> tqdm:
    """A tqdm bar on a terminal; in a file or CI log, plain lines: the first, then about one per 10 %
    of `total` but no more often than every `log_seconds`, and the last (a loop of a few seconds
    writes two lines). Without a known total, one line every 30 s.

    note: tqdm redraws its bar with carriage returns many times a second; a log that is not a
    terminal keeps every frame (or shows each as a line), so a one-minute loop floods it.
    """
    out = tqdm_kwargs.get("file") or sys.stderr
    if getattr(out, "isatty", lambda: False)():
        return tqdm(iterable, **tqdm_kwargs)
    total = tqdm_kwargs.pop("total", None)
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    tqdm_kwargs.update(total=total, leave=False, dynamic_ncols=False,  # leave: close() prints the last line
                       miniters=max(1, total // 10) if total else 1, mininterval=log_seconds if total else 30.0,
                       maxinterval=float("inf"),  # note: else tqdm's monitor thread resets miniters to 1
                       bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]")
    return _LogLines(iterable, **tqdm_kwargs)
