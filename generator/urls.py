from django.urls import path

from . import history, views
from .api import links

urlpatterns = [
    path("", views.home, name="home"),
    path("generate/", views.generate, name="generate"),
    path("generate/form/", views.generate_form, name="generate-form"),
    path("jobs/<id:pk>/", views.job_card, name="job-card"),
    path("jobs/<id:pk>/cancel/", views.cancel, name="job-cancel"),
    path("media/images/<id:pk>/", views.image_file, name="image-file"),
    path("media/images/<id:pk>/thumbnail/", views.image_thumbnail, name="image-thumbnail"),
    path("media/links/<str:token>/", links.image_by_link, name="image-link"),
    path("history/", history.history, name="history"),
    path("history/bulk/", history.bulk_action, name="history-bulk"),
    path("history/images/<id:pk>/", history.image_detail, name="image-detail"),
    path("history/images/<id:pk>/favourite/", history.toggle_favourite, name="image-favourite"),
    path("history/images/<id:pk>/delete/", history.delete_image, name="image-delete"),
    path("history/images/<id:pk>/download/", history.download_image, name="image-download"),
    path("staff/overview/", history.staff_overview, name="staff-overview"),
    path("backend-status/", views.backend_banner, name="backend-banner"),
]
