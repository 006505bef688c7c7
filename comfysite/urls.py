from django.contrib import admin
from django.urls import include, path, re_path

from generator.api.errors import no_such_route
from generator.api.main import urlpatterns as api_urlpatterns

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("generator.accounts_urls")),
    path("", include("generator.urls")),
    # Last: the API's root view (which its schema needs) is at "/", where the home page is.
    path("", include((api_urlpatterns, "api"), namespace="api")),
    re_path(r"^(?:api|v1)/(?P<path>.*)$", no_such_route),
]
