from django.apps import AppConfig


class GeneratorConfig(AppConfig):
    name = "generator"
    verbose_name = "Generator"

    def ready(self) -> None:
        from . import stats  # noqa: F401  (connects the signal handlers)
