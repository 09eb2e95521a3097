"""ASGI entry point: HTTP through Django, WebSockets through Channels (authenticated per consumer)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omniagent.settings")
django_asgi_app = get_asgi_application()

from django.conf import settings  # noqa: E402

if settings.SERVE_STATIC:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

if settings.TASK_RUNNER == "inprocess":
    from apps.runtime.warmup import runtime_warm_up_in_background

    runtime_warm_up_in_background()
if settings.INPROCESS_SWEEP:
    from apps.runtime.runner import inprocess_sweeper_start

    inprocess_sweeper_start()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from apps.feishu.views import webhook_fast_path  # noqa: E402
from omniagent.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Feishu webhooks skip Django's middleware (authenticated by signature and token instead).
        "http": webhook_fast_path(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

from apps.runtime.warmup import heap_freeze  # noqa: E402

heap_freeze()  # last: everything imported above lives as long as the process
