"""The ``python -m jscorch`` command line.

Subcommands:

* ``info``: versions of jscorch and its dependencies, the JAX backend and
  devices, the C compiler the kernel builder would use, and ``jscorch.config``.
* ``demo`` (the default): the environment, then trains a two-layer GCN on the
  embedded synthetic graph (or ``--data PATH.npz``, schema in ``docs/data.md``)
  with a progress bar (plain lines when stderr is not a terminal), prints
  the accuracies and the time per epoch and writes a PNG of the training curves
  (``--plot``, default ``gcn_training.png``).

Each subcommand is one ``_add_<name>`` function that registers its parser and
one ``cmd_<name>`` function that runs it and returns the exit code; to add a
subcommand, write both and list the ``_add_`` function in ``_SUBCOMMANDS``.

Example:
  >>> from jscorch import cli
  >>> cli.build_parser().parse_args(["info"]).command
  'info'
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Callable, Sequence

from jscorch import host_memory

DEFAULT_COMMAND = "demo"


# -- environment ---------------------------------------------------------------------------
def _version(dist: str) -> str:
  """The installed version of distribution ``dist``, or ``"not installed"``."""
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def environment() -> list[tuple[str, str]]:
  """The ``(name, value)`` pairs that ``info`` prints."""
  import jax

  import jscorch
  from jscorch.primitives import kernel_build

  rows = [("jscorch", jscorch.__version__)]
  rows += [(dist, _version(dist)) for dist in ("jax", "jaxlib", "numpy", "flax")]
  rows.append(("python", f"{platform.python_version()} ({sys.executable})"))
  rows.append(("platform", platform.platform()))
  rows.append(("backend", jax.default_backend()))
  rows.append(("devices", ", ".join(f"{d} ({d.device_kind})" for d in jax.devices())))
  cc = kernel_build.compiler()
  rows.append(("C compiler", f"{cc[0]}: {cc[1]}" if cc else "none"))
  rows.append(("config", repr(jscorch.config)))
  rows.append(("host memory", "freed buffers kept for reuse (js.retain_host_memory)"
               if host_memory.host_memory_retained() else "the C library's default"))
  return rows


def print_environment() -> None:
  """Prints :func:`environment` as aligned ``name: value`` lines."""
  rows = environment()
  width = max(len(name) for name, _ in rows) + 1
  for name, value in rows:
    print(f"{name + ':':<{width}} {value}")


# -- info ----------------------------------------------------------------------------------
def _add_info(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("info", help="print versions, backend, devices, C compiler and config",
                     description="Print versions, the JAX backend and devices, the C "
                     "compiler ($CC, cc or gcc) and jscorch.config.")
  # Looked up at call time (not bound now), so tests can patch ``cmd_info``.
  p.set_defaults(run=lambda args: cmd_info(args))


def cmd_info(args: argparse.Namespace) -> int:
  """Runs ``info``."""
  del args
  print_environment()
  return 0


# -- demo ----------------------------------------------------------------------------------
def _add_demo(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser(
      "demo", help="train a 2-layer GCN on a sparse graph (the default)",
      description="Train a two-layer GCN (jscorch.nn.GCNConv) on the embedded synthetic graph "
      "(a stochastic block model with sparse class-correlated features) or on a graph .npz "
      "(the schema is in docs/data.md), with a progress bar (plain lines when stderr is not "
      "a terminal); print the train/validation/test accuracy and the time per epoch, and write "
      "a PNG plot of the loss and accuracy curves.")
  p.add_argument("--data", metavar="PATH.npz", default=None,
                 help="graph file in the .npz schema of docs/data.md (default: the embedded "
                 "synthetic graph)")
  p.add_argument("--epochs", type=int, default=200, help="training epochs (default: 200)")
  p.add_argument("--plot", metavar="PATH.png", default="gcn_training.png",
                 help="where to write the training curves (default: gcn_training.png)")
  p.add_argument("--no-plot", action="store_true", help="do not write the plot")
  p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
  p.set_defaults(run=lambda args: cmd_demo(args))


def _section(title: str) -> None:
  print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


class Progress:
  """Training progress on ``stream`` (default stderr).

  On a terminal, a ``rich`` progress bar that redraws in place. Otherwise (a log
  file, a pipe, CI) plain lines without carriage returns: the first epoch, about
  every tenth of the run, and the last.

  Args:
    total: number of epochs.
    desc: label of the bar and the lines.
    stream: a text stream (default ``sys.stderr``).
  """

  def __init__(self, total: int, desc: str, stream=None):
    self.total, self.desc, self.n = total, desc, 0
    self.stream = sys.stderr if stream is None else stream
    self.every = max(1, total // 10)
    self.bar = None
    isatty = getattr(self.stream, "isatty", None)
    if callable(isatty) and isatty():
      from rich.console import Console
      from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
      from rich.progress import Progress as RichProgress
      self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                              MofNCompleteColumn(), TimeElapsedColumn(),
                              TextColumn("{task.fields[metrics]}"),
                              console=Console(file=self.stream), auto_refresh=False,
                              transient=False)
      self.task = self.bar.add_task(desc, total=total, metrics="")
      self.bar.start()

  def update(self, metrics: dict) -> None:
    """Records one finished epoch with its ``loss``, ``train_acc`` and ``val_acc``."""
    self.n += 1
    text = (f"loss {metrics['loss']:.4f}  train {metrics['train_acc']:.3f}  "
            f"val {metrics['val_acc']:.3f}")
    if self.bar is not None:
      self.bar.update(self.task, advance=1, metrics=text, refresh=True)
      return
    if self.n == 1 or self.n == self.total or self.n % self.every == 0:
      self.stream.write(f"{self.desc} epoch {self.n}/{self.total}  {text}\n")
      self.stream.flush()

  def close(self) -> None:
    """Stops the bar (leaving its last state on the terminal)."""
    if self.bar is not None:
      self.bar.stop()
      self.bar = None


def plot_history(history, path: str, title: str) -> None:
  """Writes the loss and accuracy curves of a :class:`jscorch.train.History` as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  epochs = range(1, len(history.loss) + 1)
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  ax1.plot(epochs, history.loss, color="tab:red")
  ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
  for name, values in (("train", history.train_acc), ("val", history.val_acc),
                       ("test", history.test_acc)):
    ax2.plot(epochs, values, label=name)
  ax2.axvline(history.best_epoch + 1, color="gray", linestyle=":", label="best val")
  ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
  ax2.legend(loc="lower right")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def cmd_demo(args: argparse.Namespace) -> int:
  """Runs ``demo``: trains a GCN, prints accuracies and timings, writes the plot."""
  if args.epochs < 1:
    print(f"error: --epochs must be at least 1; got {args.epochs}", file=sys.stderr)
    return 2
  host_memory.retain_host_memory()
  from jscorch import graph, train

  _section("environment")
  print_environment()

  _section("data")
  if args.data is None:
    g = graph.default_graph()
    print("embedded synthetic graph: a stochastic block model with class-correlated sparse "
          "bag-of-words features (pass --data PATH.npz for another graph)")
  else:
    try:
      g = graph.load_npz(args.data)
    except (OSError, ValueError) as e:
      print(f"error: cannot load --data {args.data}: {e}", file=sys.stderr)
      return 2
  print(g)
  print(f"adjacency {g.adj!r}; features {g.features!r}")

  _section("model: 2-layer GCN (jscorch.nn.GCNConv on a sparse adjacency)")
  model = train.make_gcn(g, seed=args.seed)
  for name, conv in (("conv1", model.conv1), ("conv2", model.conv2)):
    print(f"{name}: kernel {tuple(conv.kernel.shape)}, bias {tuple(conv.bias.shape)}")
  print("dropout 0.5, Adam lr 0.01, weight decay 5e-4 (first layer), "
        f"{args.epochs} epochs, full batch")

  _section("training")
  bar = Progress(args.epochs, "GCN")
  try:
    history = train.fit(model, g, epochs=args.epochs, seed=args.seed,
                        callback=lambda epoch, metrics: bar.update(metrics))
  finally:
    bar.close()

  _section("results")
  final = history.final
  print(f"final epoch:  train accuracy {final['train']:.4f}  val accuracy {final['val']:.4f}  "
        f"test accuracy {final['test']:.4f}")
  print(f"best validation accuracy {history.val_acc[history.best_epoch]:.4f} at epoch "
        f"{history.best_epoch + 1}: test accuracy {history.test_acc_at_best_val:.4f}")
  print(f"time per epoch: {history.seconds_per_epoch * 1e3:.2f} ms (training step + "
        f"evaluation; first epoch with compilation: {history.compile_seconds:.2f} s)")
  if not args.no_plot:
    plot_history(history, args.plot, f"2-layer GCN on {g.name}")
    print(f"wrote the loss and accuracy curves to {os.path.abspath(args.plot)}")
  return 0


# -- parser --------------------------------------------------------------------------------
def _add_bench(sub: argparse._SubParsersAction) -> None:
  from jscorch.bench import runner
  p = sub.add_parser("bench", help="time jscorch against BCOO, BCSR, segment_sum, scipy, torch")
  runner.add_arguments(p)
  p.add_argument("--devices", type=int, default=0, metavar="N",
                 help="sharded mode: per-device memory and communication on N CPU devices")
  p.set_defaults(run=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
  """Runs the benchmark (``--devices N`` re-executes itself with N simulated devices)."""
  if args.devices:
    if os.environ.get("JSCORCH_BENCH_CHILD") != "1":
      env = dict(os.environ, JSCORCH_BENCH_CHILD="1",
                 XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}")
      return subprocess.call([sys.executable, "-m", "jscorch", *sys.argv[1:]], env=env)
    from jscorch.bench.distributed import run_devices
    run_devices(args.devices, args.quick)
    return 0
  host_memory.retain_host_memory()     # for every contender: they share the process
  from jscorch.bench import runner
  return runner.main(args)


_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_info, _add_demo, _add_bench)


def build_parser() -> argparse.ArgumentParser:
  """The argument parser, with one subparser per entry of ``_SUBCOMMANDS``."""
  import jscorch
  parser = argparse.ArgumentParser(
      prog="python -m jscorch",
      description="jscorch: sparse machine learning in JAX. Without a subcommand, runs "
      f"'{DEFAULT_COMMAND}'.")
  parser.add_argument("--version", action="version", version=f"jscorch {jscorch.__version__}")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  for add in _SUBCOMMANDS:
    add(sub)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of ``python -m jscorch`` and the ``jscorch`` script.

  Args:
    argv: the arguments (default: ``sys.argv[1:]``).

  Returns:
    The exit code.
  """
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.command is None:
    args = parser.parse_args([DEFAULT_COMMAND])
  return int(args.run(args) or 0)
