from django.apps import AppConfig


class WebchatConfig(AppConfig):
    name = "apps.webchat"
    label = "webchat"
    verbose_name = "Web chat"
