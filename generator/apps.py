from django.apps import AppConfig


class GeneratorConfig(AppConfig):
    name = "generator"
    verbose_name = "Generator"

    def ready(self) -> None:
        from django.urls import register_converter

        from . import stats  # noqa: F401  (connects the signal handlers)
        from .parsing import IdConverter

        register_converter(IdConverter, "id")  # `<id:pk>`: see generator.parsing
