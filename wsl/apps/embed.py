"""wsl-embed: a saved encoder (a wsl-train-encoder run) applied to any zoo, written as an annotation group.

    wsl-embed run=runs/train_encoder/<date>/<time> zoo.path=zoos/<name>
    wsl-embed run=... zoo.path=zoos/<name>-gen seed=0      # one seed's encoder; default: every seed (mean)

The group (default embed_<encoder>_<task>) holds each net's predicted target(s) and its embedding, and
is read like every annotation (Zoo.table() columns "<group>/pred_<target>", Zoo.annotation(group)). When
the zoo has the task's columns the predictions are scored against them (Kendall tau / accuracy). Bad input
(an encoder that cannot read the zoo's nets, a damaged encoder file) stops with one line; nothing is written.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from wsl.apps.common import CONF_DIR, fail_cleanly, log_summary, preflight
from wsl.apps.config import typed

_EXAMPLE = "wsl-embed run=runs/train_encoder/<date>/<time> zoo.path=zoos/<name>"
EXAMPLES = {"run": _EXAMPLE, "zoo.path": _EXAMPLE}


def typed_config(cfg: DictConfig):
    from wsl.encoders.schema import EmbedConfig

    return typed(cfg, EmbedConfig, EXAMPLES)


def describe(summary: dict) -> str:
    """What was written, and the scores, in a few lines."""
    lines = [f"annotation group {summary['group']} of {summary['zoo']}: {summary['nets']} nets, "
             f"{summary['encoder']} on task {summary['task']}, seeds {summary['seeds']}, "
             f"embedding {summary['embedding_dim']} dims"]
    for key, what in (("scores", "all nets"), ("scores_test_split", "the run's test split")):
        sc = summary.get(key)
        if sc:
            parts = ", ".join(f"{k} {v:.4f}" for k, v in sc.items() if k != "n")
            lines.append(f"against the zoo's values ({what}, {sc['n']} nets): {parts}")
    return "\n".join(lines)


@hydra.main(config_path=CONF_DIR, config_name="embed", version_base="1.3")
@fail_cleanly
def _main(cfg: DictConfig) -> None:
    from wsl.encoders.embed import embed_zoo

    job = typed_config(cfg)
    summary = embed_zoo(job)
    print(describe(summary))
    log_summary(job, {k: v for k, v in summary.items() if isinstance(v, (int, float, dict))})


def main() -> None:
    preflight("embed", typed_config)  # bad values stop before the run or the zoo is read
    _main()


if __name__ == "__main__":
    main()
