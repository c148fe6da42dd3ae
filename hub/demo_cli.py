"""``leukonet demo``'s command line: options, the order of the steps, the summary it prints.

The steps themselves are :class:`hub.demo.Demo`'s.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import click

from hub.demo import AGENTS, MODEL_NAME, MODEL_VERSION, Demo, DemoError, say
from hub.ports import pick_port


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _print_summary(s: dict[str, Any], demo: Demo) -> None:
    click.echo("")
    click.echo("leukonet demo summary")
    click.echo(
        f"  images classified      {s['images_classified']} "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(s['per_agent'].items()))})"
    )
    click.echo(
        f"  held-out accuracy      {s['held_out_accuracy']:.3f} ({s['correct']}/{s['images_classified']})"
    )
    click.echo(f"  low-confidence flags   {s['low_confidence']}")
    click.echo(f"  model                  {s['model']}; parity {s['parity']}")
    click.echo(f"  dashboard              {s['dashboard_url']}")
    click.echo(
        f"  log in as              admin / {demo.secrets_['admin_password']}  (admin_password in "
        f"{demo.work / 'hub' / 'hub.yaml'}; add people with `leukonet hub users add`)"
    )
    click.echo(f"  agents                 {', '.join(AGENTS)}: enrolled, each with its own broker login")
    click.echo(f"  admin API token        in {demo.work / 'hub' / 'hub.yaml'}")
    click.echo(f"  elapsed                {s['elapsed_s']} s; logs in {demo.work / 'logs'}")


@click.command("demo")
@click.option(
    "--work",
    type=click.Path(path_type=Path),
    default=Path("var/demo"),
    show_default=True,
    help="Folder for everything the demo writes (wiped per run).",
)
@click.option("--per-class", default=120, show_default=True, help="Training images per class.")
@click.option("--heldout-per-class", default=30, show_default=True, help="Held-out images per class.")
@click.option("--image-size", default=128, show_default=True, help="Model input size (299 = full size).")
@click.option("--depth-multiplier", default=0.35, show_default=True, help="Inception V3 width multiplier.")
@click.option("--steps", default=300, show_default=True, help="Training steps.")
@click.option("--hub-port", default=8080, show_default=True, help="Preferred hub port (a free one if taken).")
@click.option("--broker-port", default=18830, show_default=True, help="Preferred embedded broker port.")
@click.option("--no-wait", is_flag=True, help="Exit after the summary instead of serving until Ctrl-C.")
def cli(
    work: Path,
    per_class: int,
    heldout_per_class: int,
    image_size: int,
    depth_multiplier: float,
    steps: int,
    hub_port: int,
    broker_port: int,
    no_wait: bool,
) -> None:
    """Run the whole loop on one machine and print a summary."""
    started = time.monotonic()
    # SIGTERM (docker stop, systemd, kill) stops the demo like Ctrl-C: children are stopped too.
    signal.signal(signal.SIGTERM, _interrupt)
    demo = Demo(
        work=work.resolve(),
        per_class=per_class,
        heldout_per_class=heldout_per_class,
        image_size=image_size,
        depth_multiplier=depth_multiplier,
        steps=steps,
        hub_port=pick_port(hub_port),
        broker_port=pick_port(broker_port),
        timeout_s=1800,
    )
    try:
        demo.prepare()
        demo.start_hub()
        train = demo.train_and_publish()
        say(f"published {MODEL_NAME} {MODEL_VERSION}: test metrics {train.get('metrics', {})}")
        demo.start_agents()
        demo.activate()
        truth = demo.feed()
        results = demo.collect(truth)
        summary = demo.summarise(train, results, truth, started)
        _print_summary(summary, demo)
        if not no_wait:
            click.echo("\nServing the dashboard; press Ctrl-C to stop.")
            while True:
                demo.check_alive()
                time.sleep(1)
    except KeyboardInterrupt:
        click.echo("\nstopping")
    except DemoError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        demo.stop_all()
