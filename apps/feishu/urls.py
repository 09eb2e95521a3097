from django.urls import path

from apps.feishu.views import feishu_webhook

app_name = "feishu"

urlpatterns = [
    path("<str:app_id>/", feishu_webhook, name="webhook"),
]
