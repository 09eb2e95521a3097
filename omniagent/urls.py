from django.contrib import admin
from django.urls import include, path

from omniagent import health
from omniagent.metrics import metrics_view

urlpatterns = [
    path("admin/webchat/", include("apps.webchat.urls")),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("webhooks/feishu/", include("apps.feishu.urls")),
]
