"""python manage.py feishu_listen [--bot APP_ID ...]: hold the Feishu long connections."""

from django.core.management.base import BaseCommand

from apps.feishu.longconn import Supervisor


class Command(BaseCommand):
    help = (
        "Hold a lark-oapi long connection (one process each) for every active bot in long-connection mode, "
        "or for the bots named with --bot; restart silent or crashed connections; stop cleanly on SIGTERM."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--bot",
            action="append",
            dest="app_ids",
            metavar="APP_ID",
            default=[],
            help="Only this bot (app_id); repeatable. Named bots are held whatever their mode.",
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=30.0,
            help="Seconds of silence tolerated beyond the server's ping interval (default 30)",
        )
        parser.add_argument(
            "--refresh", type=float, default=30.0, help="Seconds between re-reading the bot list (default 30)"
        )

    def handle(self, *args, app_ids, grace, refresh, **options):
        supervisor = Supervisor(app_ids=app_ids, grace=grace, refresh=refresh)
        wanted = supervisor.wanted_bots()
        missing = sorted(set(app_ids) - set(wanted.values()))
        if missing:
            self.stderr.write(f"not found or inactive, skipped: {', '.join(missing)}")
        if not wanted:
            self.stderr.write("no bot to connect (yet); waiting for one to be added")
        self.stdout.write(f"feishu_listen: {len(wanted)} bot(s): {', '.join(sorted(wanted.values()))}")
        self.stdout.flush()
        supervisor.run()
