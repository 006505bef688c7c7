from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("generate/", views.generate, name="generate"),
    path("jobs/<int:pk>/", views.job_card, name="job-card"),
    path("jobs/<int:pk>/cancel/", views.cancel, name="job-cancel"),
    path("media/images/<int:pk>/", views.image_file, name="image-file"),
    path("media/images/<int:pk>/thumbnail/", views.image_thumbnail, name="image-thumbnail"),
]
