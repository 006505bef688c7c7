"""Account pages under /accounts/: Django's auth views with our sign-up and throttled log-in."""

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.urls import path

from . import accounts, api_keys

urlpatterns = [
    path("signup/", login_not_required(accounts.signup), name="signup"),
    path("login/", login_not_required(accounts.ThrottledLoginView.as_view()), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("password_change/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("password_reset/", auth_views.PasswordResetView.as_view(), name="password_reset"),
    path("password_reset/done/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path(
        "reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path("api-keys/", api_keys.api_keys, name="api-keys"),
    path("api-keys/<id:pk>/revoke/", api_keys.revoke, name="api-key-revoke"),
    path("api-keys/webhook-secret/", api_keys.new_webhook_secret, name="webhook-secret-rotate"),
    path("reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
]
