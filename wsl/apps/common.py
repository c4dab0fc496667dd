"""What every app shares: Hydra's search path, checking the config before any work (`preflight`),
turning wsl errors into one clear line, and logging the resolved config and final metrics (`log_summary`)."""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wsl.errors import WslError, printable

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("wsl")

# a write the machine refuses (full disk, quota, read-only file system, permissions): the data stay
# consistent (every write is temp file + rename), so one line naming the file is all the user needs
WRITE_ERRNOS = {errno.ENOSPC: "cannot write: no space left on the device",
                errno.EDQUOT: "cannot write: disk quota exceeded", errno.EROFS: "cannot write: read-only file system",
                errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}

# the deepest directory on the way to this run's Hydra output directory that existed when preflight
# ran: a failed run may remove the (empty) directories below it again, never it or anything above
_RUN_ANCHOR: list[Path] = []


def fail_cleanly(fn):
    """Run an app body; a WslError, or a write the machine refuses (full disk, read-only target),
    becomes one line on stderr and exit status 2 (no traceback), and the run directory Hydra
    created for this run is removed again if it holds nothing but Hydra's own bookkeeping."""

    from hydra.errors import InstantiationException

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except WslError as e:
            msg = str(e)
        except InstantiationException as e:  # hydra.utils.instantiate wraps what a _target_ raises
            if not isinstance(e.__cause__, WslError):
                raise
            msg = str(e.__cause__)
        except OSError as e:
            if e.errno not in WRITE_ERRNOS:
                raise
            msg = _write_error(e)
        print(f"error: {printable(msg)}", file=sys.stderr)
        remove_empty_run_dir()
        sys.exit(2)

    return wrapper


def _write_error(e: OSError) -> str:
    """'<file>: <reason>' for a refused write; the file from the error or, where the OS gives none
    (a failing write() of an open file), from the innermost wsl frame that was writing a path."""
    name = e.filename or _path_in_traceback(e.__traceback__)
    reason = WRITE_ERRNOS[e.errno]
    hint = "; finished work is kept: free some space and rerun" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"{name if name else 'a file'}: {reason}{hint}"


def _path_in_traceback(tb) -> str | None:
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):  # innermost first
        if not str(frame.f_globals.get("__name__", "")).startswith("wsl."):
            continue
        for key in ("path", "tmp", "file", "filename"):
            v = frame.f_locals.get(key)
            if isinstance(v, (str, os.PathLike)) and str(v):
                p = Path(v)
                m = re.fullmatch(r"\.(.+)\.\d+\.tmp", p.name)  # a temp file of an atomic write: name its target
                return str(p.with_name(m.group(1)) if m else p)
    return None


def _hydra_run() -> tuple[Path, str, str | None] | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        return Path(hc.runtime.output_dir), str(hc.job.name), hc.output_subdir
    except (ImportError, ValueError):
        return None


def remove_empty_run_dir() -> None:
    """Remove this run's Hydra output directory if it holds nothing but Hydra's bookkeeping (the
    `.hydra/` config copies and the job's `<app>.log`), then its parents that this run created and
    that are now empty. Anything else in it (a logger's files, a user's file) keeps it all."""
    run = _hydra_run()
    if run is None:
        return
    out, job, subdir = run
    anchor = _RUN_ANCHOR[0] if _RUN_ANCHOR else None
    if anchor is None or out == anchor or not out.is_relative_to(anchor):
        return  # a directory that existed before this run (or one preflight did not see): not ours
    if out.is_symlink() or not out.is_dir():
        return
    own = {f"{job}.log"} | ({subdir} if subdir else set())
    entries = list(out.iterdir())
    if any(p.name not in own for p in entries):
        return
    hydra_files = {"config.yaml", "hydra.yaml", "overrides.yaml"}
    for p in entries:
        if p.is_symlink() or (p.is_dir() and any(c.name not in hydra_files or not c.is_file() or c.is_symlink()
                                                 for c in p.iterdir())):
            return
    try:
        for p in entries:
            if p.is_dir():
                for c in p.iterdir():
                    c.unlink()
                p.rmdir()
            else:
                p.unlink()
        out.rmdir()
        for parent in out.parents:
            if parent == anchor or not parent.is_relative_to(anchor):
                break
            left = list(parent.iterdir())
            sweep_record = parent / "multirun.yaml"  # what Hydra writes into a sweep directory it creates
            if left == [sweep_record] and sweep_record.is_file() and not sweep_record.is_symlink():
                sweep_record.unlink()
            elif left:
                break
            parent.rmdir()
    except OSError:  # a read-only runs/ or a concurrent job writing there: leave the rest as it is
        pass


def _variants(args: list[str], extra_sweeps: dict | None = None) -> list[list[str]]:
    """Override lists to check: every sweep value once, the other sweeps at their first value.

    Sweeps come from the command line (a,b,c / range(...)) and from `hydra.sweeper.params` of an
    experiment; checking each value once catches any impossible one before the first job starts.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(args)
    if extra_sweeps:
        given = {o.get_key_element() for o in parsed}
        parsed += parser.parse_overrides([f"{k}={v}" for k, v in extra_sweeps.items() if k not in given])
    base, sweeps = [], []
    for o in parsed:
        if o.key_or_group.startswith("hydra"):
            continue
        if o.is_sweep_override():
            vals = [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
            if vals:
                sweeps.append(vals)
        else:
            base.append(o.input_line)
    first = [v[0] for v in sweeps]
    out = [base + first]
    for i, vals in enumerate(sweeps):
        for v in vals[1:]:
            out.append(base + first[:i] + [v] + first[i + 1 :])
    return out


def _one_line(e: Exception, cfg_keys: dict | None = None) -> str:
    text = " ".join(str(x) for x in (e, e.__cause__) if x)
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if "Could not find" in text and "Available options" in text:
        head = lines[0].split(": ", 1)[-1]
        start = next(i for i, ln in enumerate(lines) if ln.startswith("Available options")) + 1
        opts = [ln for ln in lines[start:] if not ln.startswith(("Config search path", "provider="))]
        return f"{head}; valid: {', '.join(opts)}"
    m = re.search(r"Could not override '([^']+)'", text) or re.search(r"full_key: (\S+)", text)
    if m:
        key = m.group(1)
        inner = re.search(r"full_key: (\S+)", str(e.__cause__ or ""))
        if inner and inner.group(1).startswith(f"{key}."):
            key = inner.group(1)  # a mapping assigned to `key`: the key inside it that is not allowed
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        valid = (cfg_keys or {}).get(parent)
        msg = f"unknown config key {key!r}" + (f"; valid keys under {parent or 'the root'}: {', '.join(valid)}"
                                              if valid else "")
        # a mapping that declares no keys (condition, zoo.filter: null by default) takes new ones with +
        open_mapping = parent and not valid and "To append to your config use" in text
        return msg + (f"; to add a key to {parent} use +{key}=..." if open_mapping else "")
    return " ".join(lines[:3])


# Hydra's launcher plugins, by the option names they register (hydra/launcher=<name>)
LAUNCHER_PACKAGES = {"submitit_local": "hydra-submitit-launcher", "submitit_slurm": "hydra-submitit-launcher",
                     "ray": "hydra-ray-launcher", "ray_aws": "hydra-ray-launcher",
                     "joblib": "hydra-joblib-launcher", "rq": "hydra-rq-launcher"}


def check_launcher(config_name: str, args: list[str], overrides: list[str], multirun: bool = True) -> None:
    """The launcher a sweep would use must be installed: a missing plugin raises a ConfigError
    naming the pip package, before any job starts (Hydra's own message names neither).
    Call inside `initialize_config_dir`; `args` are the command-line overrides, `overrides` one
    job's non-hydra overrides. A single run (no -m) uses no launcher: only its config must load."""
    import importlib
    import re
    import shutil

    from hydra import compose
    from hydra.errors import MissingConfigException

    from wsl.errors import ConfigError

    hydra_args = [a for a in args if a.lstrip("+~").startswith("hydra")]
    chosen = next((a.split("=", 1)[1] for a in hydra_args if a.lstrip("+~").startswith("hydra/launcher=")), None)
    try:
        full = compose(config_name=config_name, overrides=hydra_args + list(overrides), return_hydra_config=True)
    except MissingConfigException as e:
        for name in re.findall(r"hydra/launcher/(\w+)", str(e)):
            if name in LAUNCHER_PACKAGES:
                pkg = LAUNCHER_PACKAGES[name]
                raise ConfigError(f"hydra/launcher={chosen or name} needs the {pkg} plugin, which is not installed: "
                                  f"pip install {pkg}") from e
        raise
    if not (multirun or str(OmegaConf.select(full, "hydra.mode")) == "RunMode.MULTIRUN"):
        return
    target = OmegaConf.select(full, "hydra.launcher._target_") or ""
    module = target.rpartition(".")[0]
    if not module:
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = e.name or module
        parts = missing.split(".")
        # hydra_plugins.hydra_ray_launcher -> hydra-ray-launcher; a library the plugin imports -> its name
        pkg = parts[1] if parts[0] == "hydra_plugins" and len(parts) > 1 else parts[0]
        pkg = pkg.replace("_", "-")
        raise ConfigError(f"hydra/launcher={chosen or target} needs the {pkg} package, which is not installed: "
                          f"pip install {pkg}") from e
    if target.endswith(".SlurmLauncher") and not (shutil.which("sbatch") and shutil.which("srun")):
        raise ConfigError(f"hydra/launcher={chosen or target} submits to SLURM, but sbatch/srun are not on PATH: "
                          "run it on a cluster login node, or try the sweep here with hydra/launcher=submitit_local")


def preflight(config_name: str, validate=None, argv: list[str] | None = None) -> None:
    """Compose the app's config from the command line before Hydra runs it, so that an unknown key,
    an unknown option, a malformed override or (with `validate`) an impossible value, in any job
    of a sweep, stops at once with one line and exit status 2, before any work."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from wsl.errors import WslError

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return  # --help, --cfg, --info ...: Hydra's own business
    multirun = any(a in ("-m", "--multirun") for a in args)
    args = [a for a in args if not a.startswith("-")]
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            variants = _variants(args)
            check_launcher(config_name, args, variants[0], multirun)
            full = compose(config_name=config_name, overrides=variants[0], return_hydra_config=True)
            hydra_args = [a for a in args if a.lstrip("+~").startswith("hydra")]
            _note_new_run_parents(compose(config_name=config_name, overrides=hydra_args + variants[0],
                                          return_hydra_config=True), multirun)
            params = full.hydra.sweeper.get("params") if "sweeper" in full.hydra else None
            extra = OmegaConf.to_container(params) if params else {}
            if extra:
                variants = _variants(args, extra)
            for ov in variants:
                cfg = compose(config_name=config_name, overrides=ov)
                if validate is not None:
                    validate(cfg)
    except (HydraException, OmegaConfBaseException, ValueError, WslError) as e:
        if isinstance(e, WslError):
            print(f"error: {printable(e)}", file=sys.stderr)
            sys.exit(2)
        keys = {}
        try:
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                base = compose(config_name=config_name)
            keys[""] = sorted(base.keys())
            for k, v in base.items():
                if isinstance(v, DictConfig):
                    keys[k] = sorted(v.keys())
        except Exception:  # the message stays useful without the list of valid keys
            pass
        print(f"error: {printable(_one_line(e, keys))}", file=sys.stderr)
        sys.exit(2)


def _note_new_run_parents(full: DictConfig, multirun: bool) -> None:
    """Remember the deepest existing directory above the run (or sweep) directory Hydra is about to
    create: the directories below it are this run's (`remove_empty_run_dir` may remove them again).
    The time in the directory's name may tick on before Hydra creates it; the anchor does not."""
    _RUN_ANCHOR.clear()
    try:
        d = OmegaConf.select(full, "hydra.sweep.dir" if multirun else "hydra.run.dir")
        if d is None:
            return
        path = Path(os.path.abspath(str(d)))
    except Exception:  # an unresolvable run dir is Hydra's to report; nothing to remember
        return
    _RUN_ANCHOR.append(next(p for p in (path, *path.parents) if p.exists()))


def run_dir() -> Path:
    """The running Hydra job's output directory (the current directory outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        return Path.cwd()


def log_summary(job, summary: dict, out_dir: str | Path | None = None, **logger_kwargs) -> dict:
    """End an app's job: its resolved config and final metrics (`summary`, nested dicts of numbers)
    go through the configured `logger=` into the run directory (`out_dir`, default Hydra's), and the
    logger is finished (W&B: the job's run is closed). logger=none logs nothing. Returns what was logged.
    `job`: the app's typed config (its `logger` node says where to; the rest is logged as the config)."""
    from wsl.apps.config import stored
    from wsl.tracking import keep_csv_rows, log_run, make_logger

    logger = make_logger(job.logger, str(out_dir if out_dir is not None else run_dir()), **logger_kwargs)
    if not logger:
        return {}
    keep_csv_rows(logger)  # a trainer of this job may have logged its steps there already
    return log_run(logger, stored(job), summary)
