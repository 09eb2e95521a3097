from django.apps import AppConfig


class FeishuConfig(AppConfig):
    name = "apps.feishu"
    label = "feishu"
