"""wsl-verify: check a zoo and report every problem at once; exit 1 if any is an error.

    wsl-verify zoo.path=zoos/quickstart
    wsl-verify zoo.path=zoos/quickstart strict=true        # warnings fail too
    wsl-verify zoo.path=zoos/quickstart repair=true        # rebuild index.h5 from the shards first
    wsl-verify zoo.path=zoos/quickstart logger=csv hydra.run.dir=runs/verify   # also log the counts
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from wsl.apps.common import CONF_DIR, fail_cleanly, log_summary, preflight
from wsl.apps.config import typed
from wsl.errors import ZooFormatError, printable
from wsl.zoo.schema import VerifyConfig

EXAMPLES = {"zoo.path": "wsl-verify zoo.path=zoos/<name>"}


def typed_config(cfg: DictConfig) -> VerifyConfig:
    return typed(cfg, VerifyConfig, EXAMPLES)


@hydra.main(config_path=CONF_DIR, config_name="verify", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.zoo.verify import check_zoo, repair_index

    job = typed_config(cfg)
    if job.repair:
        try:
            print(printable(f"repaired: {repair_index(job.zoo.path)}"))
        except OSError as e:  # a read-only zoo (or disk): the index cannot be rewritten, nothing was changed
            where = e.filename or job.zoo.path
            raise ZooFormatError(printable(f"cannot repair {where}: {e.strerror or e} (a read-only zoo? repair "
                                           "rewrites index.h5; check without repair=true)")) from e
    result = check_zoo(job.zoo.path, checksums=job.checksums)
    for p in result.problems:
        print(p)
    failed = result.errors or (job.strict and result.warnings)
    print(("FAILED " if failed else "OK ") + result.summary())
    log_summary(job, {"errors": len(result.errors), "warnings": len(result.warnings), "models": result.models,
                      "checkpoints": result.checkpoints, "files": result.files, "failed": int(bool(failed))})
    if failed:
        sys.exit(1)


def main() -> None:
    preflight("verify", typed_config)
    _main()


if __name__ == "__main__":
    main()
