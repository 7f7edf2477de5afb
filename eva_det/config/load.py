"""The one config loader: a LazyConfig file plus ``key=value`` overrides, with clear errors.

:func:`load_config` is what every tool, the model zoo and the benches load configs with: a
misspelled override key (detectron2 would add it silently), a value of the wrong type, a missing
file or a broken config is an :class:`eva_det.errors.InputError` naming it (messages listed in
``docs/TROUBLESHOOTING.md``). ``+key=value`` adds a new key on purpose.
"""

import difflib
import inspect
import os
import re
import traceback
from typing import List, Optional, Sequence, Tuple

from detectron2.config import LazyConfig
from detectron2.utils.registry import locate
from omegaconf import OmegaConf

from eva_det.errors import InputError

from .paths import resolve_config_file

__all__ = [
    "ABSENT",
    "apply_overrides",
    "check_overrides",
    "find_config_file",
    "load_config",
    "select",
]

#: What :func:`select` returns for a key the config does not have.
ABSENT = object()


def find_config_file(config_file: str) -> str:
    """``config_file``, or the config tree's file of that repository path if it is not a file.

    ``projects/ViTDet/configs/COCO/x.py`` then works from any working directory (an installed
    package ships the tree, :func:`eva_det.config.paths.resolve_config_file`). A path found in
    neither place is returned as it is.
    """
    if os.path.isfile(config_file):
        return config_file
    try:
        return resolve_config_file(config_file)
    except FileNotFoundError:
        return config_file


def load_config(config_file: str, overrides: Sequence[str] = ()):
    """``LazyConfig.load(config_file)`` plus :func:`apply_overrides`, with clear errors.

    Args:
        config_file (str): path of a LazyConfig python file; a repository path such as
            ``projects/ViTDet/configs/COCO/x.py`` that is not under the working directory is
            taken from eva_det's config tree (:func:`eva_det.config.paths.resolve_config_file`).
        overrides (Sequence[str]): ``key=value`` strings (hydra syntax; ``+key=value`` adds a new
            key on purpose).
    """
    config_file = find_config_file(config_file)
    if not os.path.isfile(config_file):
        folder = os.path.dirname(config_file) or "."
        names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        close = difflib.get_close_matches(os.path.basename(config_file), names, n=3)
        hint = f" Close matches in {folder}: {close}." if close else ""
        raise InputError(
            f"--config-file {config_file}: no such file (working directory {os.getcwd()}).{hint} "
            "Config paths are relative to the working directory, e.g. "
            "projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_eva.py from the repository."
        )
    return apply_overrides(_load_python_config(config_file), overrides)


def _load_python_config(config_file: str):
    """``LazyConfig.load`` with an InputError naming the file and line of a broken config."""
    try:
        return LazyConfig.load(config_file)
    except SyntaxError as error:
        # detectron2 re-raises the compiler's error as "Config file ... has syntax error!"
        e = error.__cause__ if isinstance(error.__cause__, SyntaxError) else error
        named = re.match(r"Config file (.+) has syntax error!", str(error.msg))
        filename = named.group(1) if named else e.filename
        if not filename or filename.startswith("<"):
            filename = config_file
        line = f": {e.text.strip()!r}" if e.text else ""
        raise InputError(
            f"{filename}, line {e.lineno}: Python syntax error ({e.msg}){line}. "
            f"Fix that line of the config (--config-file {config_file} is Python code)."
        ) from None
    except (NameError, ImportError, AttributeError) as e:
        frames = [
            f for f in traceback.extract_tb(e.__traceback__) if "site-packages" not in f.filename
        ]
        where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
        raise InputError(
            f"--config-file {config_file} cannot be loaded: {type(e).__name__}: {e}{where}. "
            "Fix the name or import in that config (or in the config it imports)."
        ) from None


def apply_overrides(cfg, overrides: Sequence[str]):
    """:func:`check_overrides`, then detectron2's ``LazyConfig.apply_overrides`` (in place)."""
    check_overrides(cfg, overrides)
    return LazyConfig.apply_overrides(cfg, list(overrides))


def check_overrides(cfg, overrides: Sequence[str]) -> None:
    """Raise InputError for overrides of keys the config does not have.

    detectron2 adds unknown keys silently, so ``train.max_iters=10`` would train for the default
    number of iterations. A key is known if the config has it, or if its parent is a ``LazyCall``
    whose target accepts an argument of that name (e.g. ``model.roi_heads.maskness_thresh``
    when the config leaves it at its default). ``+key=value`` adds a key deliberately.

    Args:
        cfg: a LazyConfig (omegaconf) object.
        overrides (Sequence[str]): ``key=value`` strings.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as e:
        raise InputError(
            f"Cannot parse the config overrides {list(overrides)}: {e}. Write them as key=value "
            "(no spaces around '='; quote values with spaces, e.g. 'key=\"a b\"')."
        ) from None
    problems, type_problems = [], []
    for o in parsed:
        if o.is_delete():
            problems.append(f"{o.input_line}: deleting keys (~key) is not supported")
        elif not o.is_add():
            problem = _unknown_key_problem(cfg, o.key_or_group)
            if problem:
                problems.append(problem)
            else:
                wrong_type = _type_problem(cfg, o.key_or_group, o.value(), o.input_line)
                if wrong_type:
                    type_problems.append(wrong_type)
    if problems:
        raise InputError(
            "Config override(s) for keys the config does not have:\n  "
            + "\n  ".join(problems)
            + "\nFix the key name, or write +key=value to add a new key on purpose."
        )
    if type_problems:
        raise InputError(
            "Config override(s) with a value of the wrong type:\n  "
            + "\n  ".join(type_problems)
            + "\nWrite a value of the type the config has (numbers unquoted; true / false)."
        )


def select(cfg, key: str):
    """``cfg``'s value at the dotted ``key`` ("" = ``cfg``), :data:`ABSENT` if it has none."""
    if not key:
        return cfg
    return OmegaConf.select(cfg, key, default=ABSENT, throw_on_resolution_failure=False)


def _unknown_key_problem(cfg, key: str) -> Optional[str]:
    """None if ``key`` exists (or is an accepted argument); else a one-line description."""
    if select(cfg, key) is not ABSENT:
        return None
    parts = key.split(".")
    for depth in range(len(parts) - 1, -1, -1):  # deepest existing parent
        parent_key = ".".join(parts[:depth])
        parent = select(cfg, parent_key)
        if parent is not ABSENT:
            break
    missing = parts[depth]
    where = f"{parent_key}.{missing}" if parent_key else missing
    if OmegaConf.is_list(parent):
        return f"{key}: {parent_key} is a list of {len(parent)} entries; index {missing} is invalid"
    if not OmegaConf.is_dict(parent):
        return f"{key}: {parent_key} is a value ({parent!r}), not a group of keys"
    candidates = [k for k in parent.keys() if k != "_target_"]
    if "_target_" in parent:
        params, accepts_any = _call_arguments(parent._target_)
        if depth == len(parts) - 1 and (missing in params or accepts_any):
            return None  # an argument of the LazyCall target left at its default
        candidates += params
    close = difflib.get_close_matches(missing, sorted(set(candidates)), n=3, cutoff=0.6)
    prefix = f"{parent_key}." if parent_key else ""
    suggestion = " Did you mean " + " or ".join(prefix + c for c in close) + "?" if close else ""
    return f"{key}: {where} does not exist.{suggestion}"


def _current_value(cfg, key: str):
    """The config's value of ``key``, or the default of the LazyCall argument it names."""
    value = select(cfg, key)
    if value is not ABSENT or "." not in key:
        return value
    parent_key, name = key.rsplit(".", 1)
    parent = select(cfg, parent_key)
    if not OmegaConf.is_dict(parent) or "_target_" not in parent:
        return ABSENT
    target = parent._target_
    target = locate(target) if isinstance(target, str) else target
    try:
        parameter = inspect.signature(target).parameters.get(name)
    except (TypeError, ValueError):
        return ABSENT
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return ABSENT
    return parameter.default


def _type_problem(cfg, key: str, value, text: str) -> Optional[str]:
    """A one-line description if ``value`` cannot stand for the number / bool at ``key``.

    Only numbers and booleans are checked (a text where a number belongs fails deep inside the
    model, e.g. ``'<' not supported between instances of 'str' and 'int'``); ints and floats
    stand for each other, ``None`` and ``${...}`` interpolations for anything.
    """
    current = _current_value(cfg, key)
    if current is ABSENT or current is None or value is None:
        return None
    if isinstance(value, str) and value.startswith("${"):
        return None
    if isinstance(current, bool):
        if isinstance(value, bool):
            return None
        expected = "true or false"
    elif isinstance(current, (int, float)):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return None
        expected = "a number"
    else:
        return None
    given = f"the text {value!r}" if isinstance(value, str) else f"{type(value).__name__} {value!r}"
    return f"{text}: {key} must be {expected} (the config has {current!r}), got {given}"


def _call_arguments(target) -> Tuple[List[str], bool]:
    """Keyword names ``target`` (class or function) accepts, and whether it accepts any name.

    Classes are followed up their MRO while ``__init__`` passes ``**kwargs`` on.
    """
    if isinstance(target, str):
        target = locate(target)
    functions = []
    if inspect.isclass(target):
        functions = [c.__init__ for c in target.__mro__ if "__init__" in vars(c)]
    elif callable(target):
        functions = [target]
    names: List[str] = []
    for fn in functions:
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):
            return names, True
        params = list(signature.parameters.values())
        names += [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return [n for n in names if n != "self"], False
    return [n for n in names if n != "self"], True
