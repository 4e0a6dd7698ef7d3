"""The ``mnclglf`` command: thin click wrappers over the library, usable with or without DVC.

Every user-fixable problem surfaces as one line ``error: …``, never a traceback. Exit status:

- 0: done;
- 1: bad input (a parameter, a missing or unreadable file, a machine that cannot run it);
- 2: command-line usage error (click's);
- 3: the training diverged (a non-finite loss); the last good checkpoint is left intact;
- 130: interrupted.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from mnclglf import config, paths
from mnclglf.errors import EXIT_DIVERGED, EXIT_USER_ERROR, DivergedError, UserError
from mnclglf.lanes import lanes_command
from mnclglf.status import status_command
from mnclglf.report.summary import report_command
from mnclglf.report.verify import verify_command

PARAMS_OPTION = click.option("--params", "params_file", default="params.yaml", show_default=True,
                             type=click.Path(dir_okay=False), help="Parameter file (the profile) to read.")
QUIET_OPTION = click.option("--quiet", is_flag=True, help="No progress bar.")


def _run_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return config.check_run(value)
    except UserError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[1], ctx, param) from None


RUN_HELP = (f"Run: a method ({', '.join(config.RUN_METHODS)}), random-init, an ablation run (mnclglf-lam<λ>, "
            "mnclglf-k<k>, mnclglf-one), or any of these followed by -seed<s>.")


@contextlib.contextmanager
def recorded(path: Path, seed: int) -> Iterator[None]:
    """Write the stage's environment record (versions, hardware, wall time) to ``path``, on success."""
    from mnclglf.envinfo import environment_record, utc_now, write_environment

    start = utc_now()
    yield
    write_environment(path, environment_record(seed, start, utc_now()))


class OneLineErrors(click.Group):
    """A click group whose every failure is one line on stderr and a non-zero exit status."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: ANN001
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except DivergedError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_DIVERGED)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Reproduce the MNCLGLF paper: download → pretrain → linear-eval → tabulate."""


@main.command()
@click.option("--dataset", required=True, type=click.Choice(config.DATASETS), help="Dataset to prepare.")
@click.option("--root", default=None, help="Data folder (default: data_root of the params file, else data/).")
@click.option("--source", default=None, metavar="URL_OR_PATH",
              help="Mirror URL or a local archive already downloaded (default: the official URL, or $MNCLGLF_MIRROR).")
@click.option("--md5", default=None, metavar="HEX", help="Override the expected MD5 of the archive.")
@PARAMS_OPTION
@QUIET_OPTION
def download(dataset: str, root: str | None, source: str | None, md5: str | None, params_file: str, quiet: bool) -> None:
    """Download, verify and prepare DATASET as uint8 tensors under ROOT/DATASET/."""
    from mnclglf.data.prepare import prepare

    raw = config.read_params(params_file) if Path(params_file).is_file() else {}
    digits = config.digits_config(raw)
    out = prepare(dataset, root or raw.get("data_root", "data"), source=source, md5=md5, digits_size=digits.size,
                  digits_test_fraction=digits.test_fraction, digits_seed=digits.split_seed, progress=not quiet)
    click.echo(f"prepared {dataset} in {out}")


@main.command()
@click.option("--dataset", required=True, type=click.Choice(config.DATASETS), help="Dataset to pretrain on.")
@click.option("--method", required=True, callback=_run_name, help=RUN_HELP + " random-init saves the untrained encoder.")
@PARAMS_OPTION
@QUIET_OPTION
def pretrain(dataset: str, method: str, params_file: str, quiet: bool) -> None:
    """Pretrain METHOD on DATASET; writes runs/DATASET/METHOD/pretrain/encoder.pt and metrics."""
    from mnclglf.train.pretrain import pretrain as run, save_random_init

    cfg = config.run_config(config.read_params(params_file), dataset, method)
    metrics = paths.metrics_dir(dataset, method) / "pretrain.json"
    with recorded(paths.metrics_dir(dataset, method) / "env_pretrain.json", cfg.seed):
        if method == "random-init":
            save_random_init(cfg, paths.pretrain_dir(dataset, method), metrics)
        else:
            summary = run(cfg, paths.pretrain_dir(dataset, method), paths.ckpt_dir(dataset, method), metrics,
                          progress=not quiet)
            click.echo(f"{method}@{dataset}: final loss {summary['final_loss']}, "
                       f"collapse monitor min/initial {summary['embedding_std_min_ratio']}")
    click.echo(f"encoder: {paths.encoder_path(dataset, method)}")


@main.command()
@click.option("--dataset", required=True, type=click.Choice(config.DATASETS), help="Dataset to train on.")
@click.option("--run", default="supervised", show_default=True, callback=_run_name,
              help="Run name: supervised, or supervised-seed<s> to repeat it with seed s.")
@PARAMS_OPTION
@QUIET_OPTION
def supervised(dataset: str, run: str, params_file: str, quiet: bool) -> None:
    """Train the supervised ResNet-18 baseline end to end; writes metrics/DATASET/RUN/supervised.json."""
    from mnclglf.train.supervised import train_supervised

    if config.plain_run(run) != "supervised":
        raise UserError(f"--run {run!r}: expected supervised or supervised-seed<s>")
    cfg = config.run_config(config.read_params(params_file), dataset, run)
    with recorded(paths.metrics_dir(dataset, run) / "env_supervised.json", cfg.seed):
        result = train_supervised(cfg, paths.pretrain_dir(dataset, run), paths.ckpt_dir(dataset, run),
                                  paths.metrics_dir(dataset, run) / "supervised.json", progress=not quiet)
    click.echo(f"{run}@{dataset}: top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}")


@main.command("linear-eval")
@click.option("--dataset", required=True, type=click.Choice(config.DATASETS), help="Dataset of the encoder.")
@click.option("--method", required=True, callback=_run_name, help=RUN_HELP)
@click.option("--encoder", "encoder_file", default=None, type=click.Path(dir_okay=False),
              help="Encoder file (default: runs/DATASET/METHOD/pretrain/encoder.pt); also a plain "
                   "ResNet-18 state_dict with torchvision's keys, bare or under backbone. "
                   "(solo-learn, lightly).")
@click.option("--kept-epochs", is_flag=True,
              help="Evaluate the intermediate encoders of pretrain.keep_epochs instead (Table 5); writes "
                   "metrics/DATASET/METHOD/epochs/linear_e<N>.json.")
@PARAMS_OPTION
@QUIET_OPTION
def linear_eval(dataset: str, method: str, encoder_file: str | None, kept_epochs: bool, params_file: str,
                quiet: bool) -> None:
    """Train a linear classifier on the frozen encoder; writes top-1/top-5 to metrics/DATASET/METHOD/linear.json."""
    from mnclglf.train.linear_eval import linear_eval as run

    raw = config.read_params(params_file)
    cfg = config.linear_eval_config(raw, dataset, method)
    run_cfg = config.run_config(raw, dataset, method)
    if kept_epochs and encoder_file:
        raise UserError("--kept-epochs and --encoder: give one or the other")
    if kept_epochs and not run_cfg.pretrain.keep_epochs:
        raise UserError(f"--kept-epochs: pretrain.keep_epochs of {method}@{dataset} is empty; nothing to evaluate")
    jobs = ([(paths.kept_encoder_path(dataset, method, e), paths.kept_linear_dir(dataset, method, e),
              paths.kept_metrics_path(dataset, method, e)) for e in run_cfg.pretrain.keep_epochs] if kept_epochs
            else [(Path(encoder_file) if encoder_file else paths.encoder_path(dataset, method),
                   paths.linear_dir(dataset, method), paths.metrics_dir(dataset, method) / "linear.json")])
    env = (paths.kept_metrics_dir(dataset, method) if kept_epochs else paths.metrics_dir(dataset, method)) \
        / "env_linear.json"
    with recorded(env, run_cfg.seed):
        for encoder, out_dir, metrics in jobs:
            result = run(encoder, cfg, raw.get("data_root", "data"), run_cfg.seed, out_dir, metrics,
                         progress=not quiet, speed=run_cfg.speed, dataset=dataset)
            click.echo(f"{method}@{dataset} (epoch {result['pretrain_epoch']}): top-1 {result['top1']:.2f}  "
                       f"top-5 {result['top5']:.2f}")


@main.command()
@click.option("--profile", required=True, help="Profile whose datasets to tabulate (a key of `profiles`).")
@click.option("--paper", "paper_file", default="results/paper.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="The paper's numbers.")
@PARAMS_OPTION
def tabulate(profile: str, paper_file: str, params_file: str) -> None:
    """Write Table 3 (CSV and Markdown) for PROFILE and print it."""
    from rich.console import Console
    from rich.table import Table

    from mnclglf.report.tables import TABLE3_HEADER, tabulate as run

    raw = config.read_params(params_file)
    profiles = raw.get("profiles") or {}
    if profile not in profiles:
        raise UserError(f"--profile {profile!r}: not in params `profiles`; allowed: {', '.join(profiles)}")
    prof = profiles[profile]
    rows, csv_path = run(paths.METRICS, list(prof["datasets"]), Path(paper_file), Path(prof["results"]), profile)
    table = Table(title=f"Table 3 — {profile} profile")
    for col in TABLE3_HEADER:
        table.add_column(col, justify="right" if col not in ("dataset", "method", "variant") else "left")
    for r in rows:
        table.add_row(*[f"{r[c]:.2f}" if isinstance(r[c], float) else (r[c] or "") for c in TABLE3_HEADER])
    Console().print(table)
    click.echo(f"table: {csv_path} (and {csv_path.with_suffix('.md')})")


@main.command()
@click.option("--dataset", default="cifar10", show_default=True, type=click.Choice(config.DATASETS),
              help="Dataset whose configuration to compare (digits shows the CPU profile's shrunken values).")
@click.option("--markdown", is_flag=True, help="Print a Markdown table (docs/FIDELITY.md) instead of a rich table.")
@click.option("--effects", is_flag=True, help="Add the expected effect of each difference (rich table only).")
@PARAMS_OPTION
def fidelity(dataset: str, markdown: bool, effects: bool, params_file: str) -> None:
    """List where the released code departs from the paper: one row per parameter, paper vs released value."""
    from mnclglf.report.fidelity import fidelity_rows, print_table, to_markdown

    rows = fidelity_rows(config.read_params(params_file), dataset)
    if markdown:
        click.echo(to_markdown(rows), nl=False)
    else:
        print_table(rows, dataset, effects)


# `verify` and `report` live beside the report code they wrap (importing them loads neither torch nor matplotlib).
main.add_command(verify_command)
main.add_command(report_command)
main.add_command(lanes_command)
main.add_command(status_command)


@main.command()
@click.option("--profile", default="paper", show_default=True, help="Profile to check (a key of `profiles`).")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON instead of a table.")
@click.option("--no-bench", is_flag=True, help="Skip the short step timing of the wall-time estimate.")
@PARAMS_OPTION
def doctor(profile: str, as_json: bool, no_bench: bool, params_file: str) -> None:
    """Check that this machine can run PROFILE well: torch, driver, GPUs, compile, disk, data, folders, time.

    Exits 1 when a check fails (what to fix is in its row).
    """
    import json

    from rich.console import Console

    from mnclglf.doctor import as_json as to_json, render, run_doctor

    rows = run_doctor(params_file, profile, bench=not no_bench)
    report = to_json(rows, profile)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        Console().print(render(rows, profile))
    if not report["ok"]:
        failed = [r for r in rows if r.status == "fail"]
        raise UserError(f"profile {profile} cannot run well here: " + "; ".join(
            f"{r.name}: {r.fix or r.detail}" for r in failed))


@main.command()
@click.option("--method", default="mnclglf", show_default=True, type=click.Choice((*config.RUN_METHODS, "supervised")),
              help="Method whose training step to time.")
@click.option("--variant", default="paper", show_default=True, type=click.Choice(config.VARIANTS),
              help="MNCLGLF reading (paper or released).")
@click.option("--shape", default="50000,32,32,10", show_default=True, metavar="N,H,W,C",
              help="Synthetic dataset: images, height, width, classes.")
@click.option("--batch-size", type=int, default=None, help="Batch size (default: 64 on cpu, 256 on cuda).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Device (default: cuda if available).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "tf32", "fp32"]), default="auto", show_default=True,
              help="speed.precision of the step: auto = the device's default (bf16 autocast + TF32 on cuda, fp32 "
                   "on cpu); fp32 = strict IEEE fp32.")
@click.option("--width", type=float, default=1.0, show_default=True, help="ResNet-18 width multiplier.")
@click.option("--steps", type=int, default=None, help="Timed steps (default: cpu 1, cuda 20).")
@click.option("--warmup", type=int, default=None, help="Extra warm-up steps (default: cpu 0, cuda 5).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the results as JSON.")
@click.option("--append", is_flag=True, help="Add to the --json file instead of overwriting it.")
@click.option("--speed", multiple=True, metavar="KEY=BOOL", help="A fast path of the speed section, e.g. channels_last=true.")
@click.option("--threads", type=int, default=0, help="CPU threads; 0 = torch's default.")
@click.option("--reference/--no-reference", default=True, help="Also time the plain eager Algorithm 1 (mnclglf paper).")
@click.option("--pil/--no-pil", default=True, help="Also time the per-image torchvision/PIL augmentation reference.")
@click.option("--flops", is_flag=True, help="Only count FLOPs per image (CPU, batch 16).")
@PARAMS_OPTION
@QUIET_OPTION
def bench(params_file: str, **kw: object) -> None:
    """Time augmentation and a training step against the per-image and plain-eager references."""
    from mnclglf.bench import bench_command

    bench_command(params_path=params_file, **kw)
